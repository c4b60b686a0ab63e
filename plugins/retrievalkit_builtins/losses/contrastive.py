"""Contrastive loss on tuples (Radenović et al. 2016, eq. 2; docs/definitions.md §3).

For each pair (q, j) of a tuple, d = ||f_q - f_j|| of L2-normalised descriptors and
L = 1/2 Y d^2 + 1/2 (1 - Y) max(0, tau - d)^2 with Y = 1 for (q, p) and Y = 0 for every
(q, n_k). A tuple's loss is the sum over its 1 + N pairs; the returned value is the sum over
tuples. tau (``margin``) = 0.7, the paper's value for MAC.
"""

from __future__ import annotations

import torch
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.tuples import safe_sqrt, tuple_squared_distances


class ContrastiveLoss(nn.Module):
    """Sum over tuples of 1/2 d(q,p)^2 + sum_k 1/2 max(0, margin - d(q,n_k))^2."""

    def __init__(self, margin: float = 0.7) -> None:
        super().__init__()
        if margin <= 0:
            raise RkitError(f"contrastive margin must be positive, got {margin}: write contrastive:margin=0.7")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, tuples: torch.Tensor) -> torch.Tensor:
        positive, negative = tuple_squared_distances(embeddings, tuples)
        negative_term = (self.margin - safe_sqrt(negative)).clamp(min=0).pow(2)
        return 0.5 * positive.sum() + 0.5 * negative_term.sum()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


@hookimpl
def rkit_losses() -> list[Component]:
    return [Component("contrastive", ContrastiveLoss, "contrastive loss on (q, p, n..) pairs, margin tau",
                      "Radenović et al. ECCV 2016, eq. 2")]
