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
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.whitening import (FittedWhitening, WhiteningData, check_output_dim, covariance,
                                    inverse_sqrt_psd, numerical_rank, pair_scatter,
                                    symmetric_eig_descending)

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

    def fit(self, data: WhiteningData) -> FittedWhitening:
        positives = data.positive_pairs if data.positive_pairs is not None else np.zeros((0, 2), int)
        negatives = data.negative_pairs if data.negative_pairs is not None else np.zeros((0, 2), int)
        if len(positives) == 0:
            raise RkitError("learned whitening needs matching pairs, and none were given: give labels "
                            "with at least two descriptors of one class, or a pairs file with label-1 lines")
        if self.rotation == "negatives" and len(negatives) == 0:
            raise RkitError("learned whitening (rotation=negatives) needs non-matching pairs, and none were "
                            "given: give labels with at least two classes, a pairs file with label-0 lines, "
                            "or use learned:rotation=all")
        x = data.descriptors
        mean = x.mean(axis=0, dtype=np.float64)
        whiten = inverse_sqrt_psd(pair_scatter(x, positives), self.ridge)
        rotated = pair_scatter(x, negatives) if self.rotation == "negatives" else covariance(x, mean)[1]
        values, vectors = symmetric_eig_descending(whiten @ rotated @ whiten)
        rank = min(numerical_rank(values, x.shape[1]),
                   numerical_rank(np.linalg.eigvalsh(rotated), x.shape[1]))
        source = "the non-matching pair differences" if self.rotation == "negatives" else "the descriptors"
        keep = check_output_dim(self.dim, rank, "learned whitening", f"{source} span {rank} directions")
        projection = vectors[:, :keep].T @ whiten
        method = f"learned:rotation={self.rotation}:ridge={self.ridge:g}"
        meta = {"in_dim": data.dim, "out_dim": keep, "rank": rank, "n_descriptors": data.count,
                "n_positive_pairs": int(len(positives)), "n_negative_pairs": int(len(negatives)),
                "rotation": self.rotation, "ridge": self.ridge, "eigenvalues": values[:keep].tolist()}
        return FittedWhitening(mean, projection, method, meta)


@hookimpl
def rkit_whitenings() -> list[Component]:
    return [Component("learned", LearnedWhitening,
                      "learned whitening Lw from matching / non-matching pairs",
                      "Radenović, Tolias, Chum, ECCV 2016, learned whitening")]
