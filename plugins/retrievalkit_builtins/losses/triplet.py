"""Triplet (margin ranking) loss on tuples, the natural addition to docs/definitions.md §3.

For each negative n_k of a tuple: max(0, ||f_q - f_p||^2 - ||f_q - f_n_k||^2 + margin), with
squared distances of L2-normalised descriptors (as in Radenović et al. TPAMI 2018 / Schroff et
al. 2015, FaceNet, eq. 1). A tuple's loss is the sum over its N triplets; the returned value is
the sum over tuples. Default margin 0.1.
"""

from __future__ import annotations

import torch
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.tuples import tuple_squared_distances


class TripletLoss(nn.Module):
    """Sum over tuples and negatives of max(0, d(q,p)^2 - d(q,n_k)^2 + margin)."""

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        if margin < 0:
            raise RkitError(f"triplet margin must be >= 0, got {margin}: write triplet:margin=0.1")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, tuples: torch.Tensor) -> torch.Tensor:
        positive, negative = tuple_squared_distances(embeddings, tuples)
        return (positive[:, None] - negative + self.margin).clamp(min=0).sum()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


@hookimpl
def rkit_losses() -> list[Component]:
    return [Component("triplet", TripletLoss, "triplet loss over (q, p, n_k), squared distances, margin",
                      "Schroff et al. CVPR 2015 (FaceNet) eq. 1; Radenović et al. TPAMI 2018")]
