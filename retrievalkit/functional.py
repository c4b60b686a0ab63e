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

    Computed stably for any p: with M the maximum over ``dim`` (a constant for the gradient),
    the mean is ``M * (mean of (v / M)^p)^(1/p)``, an identity for every M > 0. Every ratio is
    at most 1, so the power cannot overflow (``gem:p=1000`` on activations of 10 gives 10, not
    inf/NaN), and the term of the maximum itself is 1, so the mean cannot underflow to 0.
    """
    clamped = values.clamp(min=eps)
    scale = clamped.detach().amax(dim=dim, keepdim=True)
    ratio_mean = (clamped / scale).pow(p).mean(dim=dim)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    scale = scale.squeeze(dims) if scale.dim() else scale
    return scale * ratio_mean.pow(1.0 / p)
