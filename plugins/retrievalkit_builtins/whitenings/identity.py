"""No whitening (``none``): the descriptors are kept as they are (docs/definitions.md §2, the baseline).

psi(f) = L2(f): mean 0, projection I. Useful as the ``none`` level of an ablation grid and so
that every pipeline can name its whitening explicitly.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.whitening import FittedWhitening, WhiteningData


class NoWhitening:
    """The identity map; it cannot reduce the dimension (use ``pca:whiten=false`` for that)."""

    needs = "descriptors"

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def fit(self, data: WhiteningData) -> FittedWhitening:
        if self.dim is not None and self.dim != data.dim:
            raise RkitError(
                f"whitening 'none' keeps all {data.dim} dimensions and cannot give dim={self.dim}: "
                f"leave --dim out, or reduce the dimension with pca (pca:whiten=false for plain PCA)"
            )
        return FittedWhitening(np.zeros(data.dim), np.eye(data.dim), "none",
                               {"in_dim": data.dim, "out_dim": data.dim, "n_descriptors": data.count})


@hookimpl
def rkit_whitenings() -> list[Component]:
    return [Component("none", NoWhitening, "no whitening: descriptors kept as they are", "")]
