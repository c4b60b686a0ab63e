"""Learned whitening Lw (``learned``): Radenović, Tolias, Chum, ECCV 2016 (docs/definitions.md §2).

The paper's section "Whitening and dimensionality reduction".

From matching pairs S and non-matching pairs D of training descriptors f:

    C_S = mean over (i, j) in S of (f_i - f_j)(f_i - f_j)^T
    C_D = mean over (i, j) in D of (f_i - f_j)(f_i - f_j)^T
    P   = eig(C_S^(-1/2) C_D C_S^(-1/2))^T C_S^(-1/2)     (eigenvectors by decreasing eigenvalue)
    psi(f) = L2( P_D (f - m) ),  m = mean of the training descriptors, P_D = first D rows of P.

C_S^(-1/2) whitens the variation between matching descriptors; the rotation then orders the
directions by how much non-matching descriptors differ along them (a linear discriminant).

``rotation`` chooses the matrix the rotation diagonalises:

* ``negatives`` (the default, the paper's definition): C_D as above;
* ``all``: the covariance of all whitened, centred training descriptors, C_S^(-1/2) C_X
  C_S^(-1/2) with C_X the covariance of the f (the variant of the authors' public code, which
  needs no negative pairs).

C_S is regularised with a relative ridge, C_S + ridge * trace(C_S) / D * I, so it stays
invertible when there are fewer matching pairs than dimensions. Both eigen-problems use a
symmetric solver (``eigh``) in float64. At most rank(C_D) (or rank(C_X)) output dimensions are
meaningful; asking for more is an error.

Fewer descriptors than dimensions (N < D, the usual case for a few dozen photos of 1280-D
descriptors): every scatter above is zero outside the N-dimensional span B of the centred
descriptors (:func:`retrievalkit.whitening.span_basis`), and there
(C_S + r I)^(-1/2) = B (B^T C_S B + r I)^(-1/2) B^T + r^(-1/2) (I - B B^T), whose second term
the rotation never sees. So the fit works on N x N matrices in the coordinates y = B^T (f - m)
and maps the result back, P = V^T (C_S' + r I)^(-1/2) B^T: the same P as the dense D x D fit up
to round-off, in a fraction of the time (tested against the dense path).
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.whitening import (FittedWhitening, WhiteningData, check_output_dim, covariance,
                                    inverse_sqrt_psd, numerical_rank, pair_scatter, sign_rule,
                                    span_basis, symmetric_eig_descending)

ROTATIONS = ("negatives", "all")


class LearnedWhitening:
    """Lw: whiten the matching-pair scatter, rotate by the non-matching one."""

    needs = "pairs"

    def __init__(self, dim: int | None = None, rotation: str = "negatives", ridge: float = 0.01) -> None:
        if rotation not in ROTATIONS:
            raise RkitError(f"learned:rotation must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
        if ridge < 0:
            raise RkitError(f"learned:ridge must be >= 0 (a small positive value such as 0.01), got {ridge}")
        self.dim = dim
        self.rotation = rotation
        self.ridge = ridge

    def fit(self, data: WhiteningData, *, in_span: bool = True) -> FittedWhitening:
        """Learn P and m; ``in_span=False`` forces the dense D x D path (used by the tests)."""
        positives, negatives = self._pairs(data)
        x = data.descriptors
        mean = x.mean(axis=0, dtype=np.float64)
        basis = span_basis(x, mean) if in_span and self.ridge > 0 else None
        if basis is None:
            values, vectors, whiten, rank = self._solve(x, mean, positives, negatives, x.shape[1])
        else:
            values, vectors, whiten, rank = self._solve((x - mean) @ basis, np.zeros(basis.shape[1]),
                                                        positives, negatives, x.shape[1])
            vectors = vectors * sign_rule(basis @ vectors)  # the dense path's rule, on the D-vectors
        source = "the non-matching pair differences" if self.rotation == "negatives" else "the descriptors"
        keep = check_output_dim(self.dim, rank, "learned whitening", f"{source} span {rank} directions")
        projection = vectors[:, :keep].T @ whiten
        if basis is not None:
            projection = projection @ basis.T
        method = f"learned:rotation={self.rotation}:ridge={self.ridge:g}"
        meta = {"in_dim": data.dim, "out_dim": keep, "rank": rank, "n_descriptors": data.count,
                "n_positive_pairs": int(len(positives)), "n_negative_pairs": int(len(negatives)),
                "rotation": self.rotation, "ridge": self.ridge, "eigenvalues": values[:keep].tolist()}
        return FittedWhitening(mean, projection, method, meta)

    def _pairs(self, data: WhiteningData) -> tuple[np.ndarray, np.ndarray]:
        positives = data.positive_pairs if data.positive_pairs is not None else np.zeros((0, 2), int)
        negatives = data.negative_pairs if data.negative_pairs is not None else np.zeros((0, 2), int)
        if len(positives) == 0:
            raise RkitError("learned whitening needs matching pairs, and none were given: give labels "
                            "with at least two descriptors of one class, or a pairs file with label-1 lines")
        if self.rotation == "negatives" and len(negatives) == 0:
            raise RkitError("learned whitening (rotation=negatives) needs non-matching pairs, and none were "
                            "given: give labels with at least two classes, a pairs file with label-0 lines, "
                            "or use learned:rotation=all")
        return positives, negatives

    def _solve(self, x: np.ndarray, mean: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
               full_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Eigenvalues, rotation (columns), C_S^(-1/2) and rank, in the coordinates of ``x``."""
        whiten = inverse_sqrt_psd(pair_scatter(x, positives), self.ridge, dim=full_dim)
        rotated = pair_scatter(x, negatives) if self.rotation == "negatives" else covariance(x, mean)[1]
        values, vectors = symmetric_eig_descending(whiten @ rotated @ whiten)
        rank = min(numerical_rank(values, full_dim), numerical_rank(np.linalg.eigvalsh(rotated), full_dim))
        return values, vectors, whiten, rank


@hookimpl
def rkit_whitenings() -> list[Component]:
    return [Component("learned", LearnedWhitening,
                      "learned whitening Lw from matching / non-matching pairs",
                      "Radenović, Tolias, Chum, ECCV 2016, learned whitening")]
