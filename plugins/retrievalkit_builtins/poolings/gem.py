"""GeM: generalised-mean pooling with a learnable exponent (Radenović, Tolias, Chum, TPAMI 2018, eq. 3).

f_k = (mean over (x, y) of max(X_k(x, y), eps)^p)^(1/p)   (docs/definitions.md §1)

p = 1 is average pooling, p -> infinity approaches MAC. p starts at 3 and is a ``nn.Parameter``,
trained with the network unless ``learn_p=false``. The formula itself is
:func:`retrievalkit.functional.generalized_mean`, shared with multi-scale extraction.
"""

from __future__ import annotations

import torch
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.errors import ComponentOptionError
from retrievalkit.functional import generalized_mean


class GeMPooling(nn.Module):
    """Generalised mean of each channel, ``(B, K, H, W) -> (B, K)``; the exponent is ``.p``."""

    def __init__(self, p: float = 3.0, learn_p: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if not p > 0:
            raise ComponentOptionError(f"gem needs p > 0, got p={p}: e.g. gem:p=3")
        if not eps > 0:
            raise ComponentOptionError(f"gem needs eps > 0, got eps={eps}: e.g. gem:eps=1e-6")
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learn_p)
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return generalized_mean(features, self.p, dim=(-2, -1), eps=self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, learn_p={self.p.requires_grad}, eps={self.eps}"


@hookimpl
def rkit_poolings() -> list[Component]:
    return [Component("gem", GeMPooling, "generalised mean of each channel, learnable p (GeM)",
                      "Radenović, Tolias, Chum, TPAMI 2018, eq. 3")]
