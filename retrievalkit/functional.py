"""Small tensor formulas shared by components and jobs (one copy of each, imported where used)."""

from __future__ import annotations

import torch


def generalized_mean(values: torch.Tensor, p: float | torch.Tensor, dim: int | tuple[int, ...],
                     eps: float = 1e-6) -> torch.Tensor:
    """Generalised (power) mean ``(mean over dim of max(v, eps)^p)^(1/p)``.

    The GeM formula of Radenović, Tolias, Chum (TPAMI 2018, eq. 3; docs/definitions.md §1). It is used
    twice: by GeM pooling over the spatial positions of a feature map, and by multi-scale
    extraction over the scales of one image (docs/definitions.md §1, "combined by generalised mean with
    the GeM p"). Values below ``eps`` are clamped to ``eps`` so non-integer powers stay real; p=1
    is the arithmetic mean of the clamped values and p -> infinity approaches the maximum.
    """
    return values.clamp(min=eps).pow(p).mean(dim=dim).pow(1.0 / p)
