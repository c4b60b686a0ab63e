"""SPoC: sum pooling with a Gaussian centre prior (Babenko and Lempitsky, ICCV 2015, section 3.2).

f_k = sum over (x, y) of a(x, y) X_k(x, y), with
a(x, y) = exp(-((x - W/2)^2 + (y - H/2)^2) / (2 s^2))   (docs/definitions.md §1)

Coordinates: the feature map cell in column j and row i (0-based) sits at its centre,
x = j + 0.5, y = i + 0.5, so the map spans [0, W] x [0, H] and its centre is (W/2, H/2).
s is one third of the distance from the centre to the closest border: s = min(W, H) / 6.
With ``center_prior=false`` a(x, y) = 1 (plain sum pooling). Values are summed as they are
(no rectification; the backbones end with a ReLU/ReLU6). The model L2-normalises afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from retrievalkit import Component, hookimpl


def centre_prior(height: int, width: int, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(height, width)`` Gaussian weights a(x, y) of the SPoC centre prior."""
    sigma = min(height, width) / 6.0
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5 - height / 2.0
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5 - width / 2.0
    squared = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-squared / (2.0 * sigma**2))


class SPoCPooling(nn.Module):
    """Centre-weighted sum of each channel, ``(B, K, H, W) -> (B, K)``."""

    def __init__(self, center_prior: bool = True) -> None:
        super().__init__()
        self.center_prior = center_prior

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.center_prior:
            return features.sum(dim=(-2, -1))
        height, width = features.shape[-2:]
        weights = centre_prior(height, width, features.device, features.dtype)
        return (features * weights).sum(dim=(-2, -1))

    def extra_repr(self) -> str:
        return f"center_prior={self.center_prior}"


@hookimpl
def rkit_poolings() -> list[Component]:
    return [Component("spoc", SPoCPooling, "sum of each channel, Gaussian centre prior (SPoC)",
                      "Babenko & Lempitsky, ICCV 2015, sec. 3.2")]
