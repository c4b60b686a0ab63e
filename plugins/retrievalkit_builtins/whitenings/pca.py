"""PCA-whitening (``pca``): Babenko & Lempitsky, ICCV 2015 (SPoC design, post-processing; docs/definitions.md §2).

Learned on descriptors f (L2-normalised) of a separate set: mean m and the eigen-decomposition
of their covariance, eigenvalues l_1 >= l_2 >= ... with eigenvectors U. Then

    psi(f) = L2( diag(l_1 .. l_D)^(-1/2) U_D^T (f - m) )

keeping the first D components. With ``whiten=false`` the scaling by l^(-1/2) is left out:
plain PCA dimension reduction, psi(f) = L2(U_D^T (f - m)).

N training descriptors span at most N - 1 directions; asking for more than the numerical rank
of their covariance is an error (``dim=None`` keeps them all). With N < D the axes come from
an SVD of the centred descriptors (:func:`retrievalkit.whitening.principal_axes`), not from the
D x D covariance: the same result, without the D x D eigen-decomposition.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.whitening import FittedWhitening, WhiteningData, check_output_dim, principal_axes


class PCAWhitening:
    """PCA (with whitening by default) learned from descriptors alone."""

    needs = "descriptors"

    def __init__(self, dim: int | None = None, whiten: bool = True) -> None:
        self.dim = dim
        self.whiten = whiten

    def fit(self, data: WhiteningData, *, in_span: bool = True) -> FittedWhitening:
        """Learn m and P; ``in_span=False`` forces the dense D x D eigen-decomposition (tests)."""
        mean, values, vectors, rank = principal_axes(data.descriptors, in_span=in_span)
        keep = check_output_dim(self.dim, rank, "PCA", f"{data.count} descriptors span at most "
                                f"{max(data.count - 1, 0)} directions")
        projection = vectors[:, :keep].T
        if self.whiten:
            projection = projection / np.sqrt(values[:keep])[:, None]
        method = "pca" if self.whiten else "pca:whiten=false"
        meta = {"in_dim": data.dim, "out_dim": keep, "rank": rank, "n_descriptors": data.count,
                "whiten": self.whiten, "eigenvalues": values[:keep].tolist()}
        return FittedWhitening(mean, projection, method, meta)


@hookimpl
def rkit_whitenings() -> list[Component]:
    return [Component("pca", PCAWhitening, "PCA-whitening learned on separate descriptors",
                      "Babenko & Lempitsky, ICCV 2015, SPoC post-processing")]
