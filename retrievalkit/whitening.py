"""Whitening and dimension reduction of global descriptors (docs/definitions.md §2).

A whitening is an affine map learned on training descriptors (never on the test data):

    psi(f) = L2( P (f - m) )        P: (D_out, D_in) projection, m: (D_in,) mean

This module holds what every whitening method shares:

* :class:`WhiteningData`: the training material, descriptors plus the supervision a method
  needs (matching / non-matching pairs, or labels from which pairs are made);
* :class:`FittedWhitening`: the learned ``m`` and ``P``, applied in NumPy (:meth:`apply`) or as
  a model layer with weight ``P`` and bias ``-P m`` (:meth:`to_linear`) so a model can
  carry it end to end, saved as a small ``.npz`` (:meth:`save`, :meth:`load`);
* the linear algebra, written once: :func:`covariance`, :func:`pair_scatter` (the C_S / C_D of
  Radenović et al. 2016, learned whitening), :func:`principal_axes` (PCA by a symmetric
  eigen-solver, or an SVD in the span of the data), :func:`inverse_sqrt_psd` (C^(-1/2) with a
  ridge), :func:`numerical_rank` and :func:`span_basis` (fits with fewer descriptors than
  dimensions work in the N-dimensional span of the data, not on D x D matrices);
* :func:`whiten_rows`: applying a whitening, the one code path (NumPy, float64) used by
  :meth:`FittedWhitening.apply` and by a model's whitening layer alike;
* :func:`fit_whitening`: choose a method by its plugin name (``none``, ``pca``, ``learned``).

The methods themselves are plugins (``plugins/retrievalkit_builtins/whitenings/``). All fits
run in float64; :meth:`FittedWhitening.apply` also computes in float64 and returns float32.

Choices where the definitions (docs/definitions.md §2) are silent, written down here:

* covariances are means (divided by N, the number of descriptors or pairs), not N - 1;
* the ridge is relative: ``C + ridge * trace(C) / D * I``, so it does not depend on the scale of
  the descriptors;
* an output dimension larger than the number of meaningful directions the training data can
  give (its numerical rank; at most N - 1 for N training descriptors) is an error, never a silent
  padding with arbitrary directions. ``dim=None`` keeps every meaningful direction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .components import ComponentSpec
from .descriptors import check_finite, l2_normalize
from .errors import RkitError
from .npzfile import load_npz, save_npz

WHITENING_FORMAT_VERSION = 1

#: Rows processed at once when a product would otherwise need an (N, D) float64 copy.
CHUNK_ROWS = 65536

#: Default cap on the number of pairs :meth:`WhiteningData.from_labels` makes of each kind.
DEFAULT_MAX_PAIRS = 200_000


# -- training material ---------------------------------------------------------------------

def _as_pairs(pairs: Any, n: int, what: str) -> np.ndarray | None:
    if pairs is None:
        return None
    array = np.asarray(pairs)
    if array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise RkitError(f"{what} must be an (P, 2) array of descriptor indices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise RkitError(f"{what} must hold integer descriptor indices, got {array.dtype} values")
        array = array.astype(np.int64)
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= n):
        raise RkitError(
            f"{what} refer to descriptor {int(array.max()) if array.max() >= n else int(array.min())}, "
            f"but there are only {n} descriptors (indices 0..{n - 1}): check that the pairs were made "
            f"for this descriptors file"
        )
    return array


#: Above this many pairs in all, :func:`pairs_from_labels` samples instead of enumerating.
ENUMERATE_LIMIT = 5_000_000


def pairs_from_labels(labels: Sequence[Any], *, max_pairs: int | None = DEFAULT_MAX_PAIRS,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All same-label pairs (positives) and all different-label pairs (negatives), ``i < j``.

    When there are more than ``max_pairs`` pairs of a kind, a uniform sample of ``max_pairs``
    distinct pairs of that kind is drawn with ``seed`` (reproducible); ``None`` keeps all. Pairs
    are sorted. Large collections (more than ``ENUMERATE_LIMIT`` pairs in all) are sampled
    without listing every pair, so memory stays proportional to ``max_pairs``.
    """
    codes = np.unique(np.asarray([str(label) for label in labels]), return_inverse=True)[1].ravel()
    n = len(codes)
    rng = np.random.default_rng(seed)
    total = n * (n - 1) // 2
    class_sizes = np.bincount(codes) if n else np.zeros(0, np.int64)
    n_positive = int((class_sizes * (class_sizes - 1) // 2).sum())
    n_negative = total - n_positive
    if max_pairs is None and total > ENUMERATE_LIMIT:
        raise RkitError(f"{n} labelled descriptors make {total} pairs, too many to use all: "
                        f"give a maximum number of pairs (--max-pairs)")
    if total <= ENUMERATE_LIMIT:
        first, second = np.triu_indices(n, k=1)
        same = codes[first] == codes[second]

        def pick(mask: np.ndarray) -> np.ndarray:
            pairs = np.stack([first[mask], second[mask]], axis=1).astype(np.int64)
            if max_pairs is not None and len(pairs) > max_pairs:
                pairs = pairs[np.sort(rng.choice(len(pairs), size=max_pairs, replace=False))]
            return pairs.reshape(-1, 2)

        return pick(same), pick(~same)
    assert max_pairs is not None
    members = [np.flatnonzero(codes == c) for c in range(len(class_sizes))]
    # the same members, concatenated class by class: members[c][i] == by_class[starts[c] + i]
    by_class = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]]).astype(np.int64)
    weights = class_sizes * (class_sizes - 1) / 2.0

    def draw_positive(k: int) -> np.ndarray:
        # a class with probability C(n_c, 2) / n_positive, then two of its members: uniform
        classes = rng.choice(len(class_sizes), size=k, p=weights / weights.sum())
        offset = rng.random((k, 2))
        a = (offset[:, 0] * class_sizes[classes]).astype(np.int64)
        b = (offset[:, 1] * (class_sizes[classes] - 1)).astype(np.int64)
        b = b + (b >= a)  # a different member
        return np.stack([by_class[starts[classes] + a], by_class[starts[classes] + b]], axis=1)

    def draw_negative(k: int) -> np.ndarray:
        pairs = rng.integers(0, n, size=(k, 2))
        return pairs[codes[pairs[:, 0]] != codes[pairs[:, 1]]]

    def sample(count: int, draw: Any) -> np.ndarray:
        want = max_pairs  # < count: the draws below rarely repeat a pair
        found = np.zeros((0, 2), np.int64)
        while len(found) < want:
            pairs = np.sort(draw(2 * (want - len(found)) + 16), axis=1)
            found = np.unique(np.concatenate([found, pairs.astype(np.int64)]), axis=0)
        return found[np.sort(rng.choice(len(found), size=want, replace=False))]

    def enumerate_between(same: bool) -> np.ndarray:
        # every pair of the kind, class by class (used when there are at most max_pairs of them)
        blocks = []
        for c, mc in enumerate(members):
            for d in ([c] if same else range(c + 1, len(members))):
                a, b = np.meshgrid(mc, members[d], indexing="ij")
                block = np.stack([a.ravel(), b.ravel()], axis=1)
                blocks.append(block[block[:, 0] < block[:, 1]] if same else np.sort(block, axis=1))
        pairs = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int64)
        return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)

    positives = sample(n_positive, draw_positive) if n_positive > max_pairs else enumerate_between(True)
    negatives = sample(n_negative, draw_negative) if n_negative > max_pairs else enumerate_between(False)
    return positives.reshape(-1, 2), negatives.reshape(-1, 2)


@dataclasses.dataclass
class WhiteningData:
    """Descriptors to learn a whitening from, with the supervision a method may need.

    Attributes:
        descriptors: ``(N, D)`` training descriptors (L2-normalised pooled descriptors).
        positive_pairs: ``(P, 2)`` row indices of matching pairs (the set S), or ``None``.
        negative_pairs: ``(Q, 2)`` row indices of non-matching pairs (the set D), or ``None``.
        labels: ``(N,)`` a class per descriptor (e.g. the landmark folder), or ``None``.
    """

    descriptors: np.ndarray
    positive_pairs: np.ndarray | None = None
    negative_pairs: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.descriptors)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise RkitError(f"whitening needs an (N, D) matrix of descriptors, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise RkitError("the training descriptors contain NaN or infinite values: re-extract them")
        self.descriptors = x
        n = x.shape[0]
        self.positive_pairs = _as_pairs(self.positive_pairs, n, "positive (matching) pairs")
        self.negative_pairs = _as_pairs(self.negative_pairs, n, "negative (non-matching) pairs")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (n,):
                raise RkitError(f"labels must give one label per descriptor ({n}), got shape {self.labels.shape}")

    @property
    def count(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def has_pairs(self) -> bool:
        return self.positive_pairs is not None and self.negative_pairs is not None

    @classmethod
    def from_labels(cls, descriptors: np.ndarray, labels: Sequence[Any], *,
                    max_pairs: int | None = DEFAULT_MAX_PAIRS, seed: int = 0) -> WhiteningData:
        """Pairs from labels: same label = matching, different label = non-matching (see
        :func:`pairs_from_labels`)."""
        positives, negatives = pairs_from_labels(labels, max_pairs=max_pairs, seed=seed)
        return cls(descriptors, positives, negatives, np.asarray([str(label) for label in labels]))

    def with_pairs_from_labels(self, *, max_pairs: int | None = DEFAULT_MAX_PAIRS, seed: int = 0) -> WhiteningData:
        """This data, with pairs made from its labels where pairs were not given."""
        if self.has_pairs or self.labels is None:
            return self
        positives, negatives = pairs_from_labels(list(self.labels), max_pairs=max_pairs, seed=seed)
        return WhiteningData(self.descriptors,
                             self.positive_pairs if self.positive_pairs is not None else positives,
                             self.negative_pairs if self.negative_pairs is not None else negatives,
                             self.labels)


def read_pairs_file(path: str | Path, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a pairs file: one pair per line, ``A<TAB>B<TAB>LABEL``.

    ``A`` and ``B`` are row indices of the descriptors file or image paths as stored in it;
    ``LABEL`` is ``1`` for a matching pair and ``0`` for a non-matching one. Fields may be
    separated by tabs or, when no tab is present on the line, by spaces. Blank lines and lines
    starting with ``#`` are ignored. Returns ``(positive_pairs, negative_pairs)``.
    """
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"pairs file {path} does not exist: write one pair per line as A<TAB>B<TAB>1|0")
    index_of = {p: i for i, p in enumerate(paths)}
    positives: list[tuple[int, int]] = []
    negatives: list[tuple[int, int]] = []

    def resolve(token: str, lineno: int) -> int:
        if token in index_of:
            return index_of[token]
        if token.lstrip("-").isdigit():
            value = int(token)
            if 0 <= value < len(paths):
                return value
            raise RkitError(f"{path}:{lineno}: index {value} is out of range: the descriptors file has "
                            f"{len(paths)} rows (0..{len(paths) - 1})")
        raise RkitError(f"{path}:{lineno}: {token!r} is neither a row index nor a path of the descriptors "
                        f"file: use the paths exactly as `rkit extract` stored them (or row indices)")

    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if len(fields) != 3 or fields[2] not in {"0", "1"}:
            raise RkitError(f"{path}:{lineno}: expected A<TAB>B<TAB>1|0 (1 = matching, 0 = non-matching), "
                            f"got {line!r}")
        pair = (resolve(fields[0], lineno), resolve(fields[1], lineno))
        (positives if fields[2] == "1" else negatives).append(pair)
    as_array = lambda pairs: np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return as_array(positives), as_array(negatives)


# -- shared linear algebra -----------------------------------------------------------------

def _chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _row_chunks(n: int, what: str) -> Iterator[slice]:
    """Chunks of rows, with a progress bar when there are many (a long fit shows its progress)."""
    chunks = list(_chunks(n))
    if len(chunks) < 4:
        return iter(chunks)
    from tqdm.auto import tqdm

    return iter(tqdm(chunks, desc=what, unit="chunk", leave=False, dynamic_ncols=True))


def covariance(x: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance ``mean over i of (x_i - m)(x_i - m)^T`` in float64 (divided by N)."""
    n, d = x.shape
    m = x.mean(axis=0, dtype=np.float64) if mean is None else np.asarray(mean, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    for rows in _row_chunks(n, "covariance"):
        centred = x[rows].astype(np.float64) - m
        cov += centred.T @ centred
    return m, cov / n


def pair_scatter(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``mean over (i, j) in pairs of (x_i - x_j)(x_i - x_j)^T`` in float64.

    This is C_S (matching pairs) or C_D (non-matching pairs) of the learned whitening of
    Radenović et al. 2016 (section "Whitening and dimensionality reduction").
    """
    d = x.shape[1]
    scatter = np.zeros((d, d), dtype=np.float64)
    for rows in _row_chunks(len(pairs), "pair scatter"):
        diff = x[pairs[rows, 0]].astype(np.float64) - x[pairs[rows, 1]].astype(np.float64)
        scatter += diff.T @ diff
    return scatter / len(pairs)


def sign_rule(vectors: np.ndarray) -> np.ndarray:
    """Per column, +1 or -1 so that its entry of largest magnitude becomes positive."""
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    return np.where(largest < 0, -1.0, 1.0)


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip columns by :func:`sign_rule` (in place), so fits are reproducible across LAPACKs."""
    vectors *= sign_rule(vectors)
    return vectors


def symmetric_eig_descending(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors (columns) of a symmetric matrix, by ``eigh``.

    Each eigenvector's sign is fixed so that its entry of largest magnitude is positive, so a fit
    is reproducible across LAPACK builds.
    """
    sym = (matrix + matrix.T) / 2.0
    values, vectors = np.linalg.eigh(sym)
    return values[::-1].copy(), fix_signs(vectors[:, ::-1].copy())


def numerical_rank(eigenvalues: np.ndarray, size: int | None = None) -> int:
    """Number of eigenvalues of a PSD matrix that are not zero up to float64 round-off.

    The tolerance is NumPy's ``matrix_rank`` one: ``max eigenvalue * size * eps``.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.size == 0 or values.max() <= 0:
        return 0
    tol = values.max() * (size or values.size) * np.finfo(np.float64).eps
    return int(np.count_nonzero(values > tol))


def span_basis(x: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis ``(D, N)`` of a space holding every centred row, when N < D.

    N descriptors minus their mean, and every difference of two of them, lie in the span of the
    centred rows, so every covariance and scatter a whitening uses is zero outside it. A fit can
    then work on N-dimensional coordinates (``(x - m) @ basis``) instead of D x D matrices, with
    the same result up to round-off: with 27 descriptors of 1280 dimensions, 27 x 27 instead of
    1280 x 1280 eigen-problems. ``None`` when N >= D (nothing to gain).
    """
    n, d = x.shape
    if n >= d:
        return None
    _, _, vt = np.linalg.svd(x.astype(np.float64) - mean, full_matrices=False)
    return vt.T


def principal_axes(x: np.ndarray, *, in_span: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """PCA of the rows of ``x``: ``(mean, eigenvalues decreasing, eigenvectors as columns, rank)``.

    With fewer rows than dimensions (and ``in_span``) the covariance is never formed: the
    singular value decomposition of the centred rows gives its non-zero eigenvalues
    (``s^2 / N``) and their eigenvectors, min(N, D) of them; the dense path (``eigh`` of the
    D x D covariance) gives the same ones plus D - N directions of eigenvalue zero, which no
    caller keeps (they are beyond the rank).
    """
    n, d = x.shape
    if in_span and n < d:
        mean = x.mean(axis=0, dtype=np.float64)
        _, singular, vt = np.linalg.svd(x.astype(np.float64) - mean, full_matrices=False)
        values = singular**2 / n
        return mean, values, fix_signs(vt.T.copy()), numerical_rank(values, d)
    mean, cov = covariance(x)
    values, vectors = symmetric_eig_descending(cov)
    return mean, values, vectors, numerical_rank(values, cov.shape[0])


def inverse_sqrt_psd(matrix: np.ndarray, ridge: float = 0.0, dim: int | None = None) -> np.ndarray:
    """``(C + ridge * trace(C) / D * I)^(-1/2)`` of a symmetric PSD matrix, by ``eigh``.

    ``D`` is ``dim`` when given (the full dimension, for a matrix written in the coordinates of a
    subspace, see :func:`span_basis`), else the size of ``matrix``. Raises :class:`RkitError`
    when the (regularised) matrix is singular.
    """
    d = matrix.shape[0]
    values, vectors = symmetric_eig_descending(matrix)
    values = values + ridge * float(np.trace(matrix)) / (dim or d)
    if numerical_rank(values, d) < d or values.min() <= 0:
        raise RkitError(
            f"the matrix to invert is singular (rank {numerical_rank(values, d)} of {d}): "
            f"use a positive ridge (e.g. learned:ridge=0.01) or more training pairs"
        )
    return (vectors / np.sqrt(values)) @ vectors.T


def check_output_dim(dim: int | None, rank: int, what: str, hint: str) -> int:
    """The output dimension to keep: ``dim``, or every meaningful direction when ``None``.

    ``rank`` is the number of meaningful directions the training data gives; asking for more is
    a :class:`RkitError` that says how many there are and what to do.
    """
    if dim is not None and dim <= 0:
        raise RkitError(f"the output dimension must be positive, got dim={dim}")
    if rank <= 0:
        raise RkitError(f"{what}: the training data gives no meaningful direction ({hint})")
    if dim is None:
        return rank
    if dim > rank:
        raise RkitError(
            f"{what} can give at most {rank} meaningful dimensions from this training data, but "
            f"dim={dim} was asked for: use --dim {rank} or less, or learn it on more descriptors "
            f"({hint})"
        )
    return dim


# -- applying a whitening: the one code path --------------------------------------------------

def whiten_rows(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, what: str = "the whitening") -> np.ndarray:
    """``L2(W x + b)`` of each row of ``x`` in float64, returned as float32.

    The one implementation of applying a whitening: :meth:`FittedWhitening.apply` (NumPy
    callers, ``rkit whiten apply``, ``--whiten FILE``) and a model's whitening layer
    (:class:`retrievalkit.model.WhiteningLayer`) both call it, so they agree exactly. Rows
    are processed in chunks so no ``(N, D)`` float64 copy is made of a large matrix. Non-finite
    input or output is refused.
    """
    x = check_finite(np.asarray(x), f"{what}: the input", hint="re-extract them (every descriptor must be finite)")
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, with a clear message
        for rows in _chunks(x.shape[0]):
            out[rows] = l2_normalize(x[rows].astype(np.float64) @ weight.T + bias)
    return check_finite(out, f"{what}: the output",
                        hint="its matrix holds huge or non-finite values: fit it again on finite descriptors")


# -- the fitted whitening ------------------------------------------------------------------

@dataclasses.dataclass
class FittedWhitening:
    """A learned whitening ``psi(f) = L2(P (f - m))``.

    Attributes:
        mean: ``(D_in,)`` the training mean ``m``.
        projection: ``(D_out, D_in)`` the matrix ``P`` (rows in order of importance, so keeping
            the first rows reduces the dimension).
        method: the component spec that made it (``pca``, ``learned:rotation=negatives`` ...).
        meta: JSON-serialisable facts: dims, rank, counts, eigenvalues, source file ...
    """

    mean: np.ndarray
    projection: np.ndarray
    method: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.projection = np.asarray(self.projection, dtype=np.float64)
        if self.projection.ndim != 2 or self.projection.shape[1] != self.mean.shape[0]:
            raise ValueError(f"projection must be (D_out, {self.mean.shape[0]}), got {self.projection.shape}")

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def bias(self) -> np.ndarray:
        """``-P m``: the bias of the equivalent linear layer."""
        return -(self.projection @ self.mean)

    def truncated(self, dim: int) -> FittedWhitening:
        """The same whitening keeping only the first ``dim`` output dimensions."""
        if not 0 < dim <= self.out_dim:
            raise RkitError(f"cannot keep {dim} dimensions of a whitening with {self.out_dim} outputs: "
                            f"choose 1..{self.out_dim}")
        meta = {**self.meta, "out_dim": dim}
        return FittedWhitening(self.mean, self.projection[:dim], self.method, meta)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten ``(N, D_in)`` descriptors (or one ``(D_in,)``): project, then L2-normalise.

        :func:`whiten_rows` with weight ``P`` and bias ``-P m``: the same function a model's
        whitening layer runs, in float64, returned as float32. A row that projects to zero stays
        zero; non-finite input or output is refused (:class:`RkitError`).
        """
        x = np.asarray(x)
        single = x.ndim == 1
        x2 = x.reshape(1, -1) if single else x
        if x2.ndim != 2 or x2.shape[1] != self.in_dim:
            raise RkitError(
                f"this whitening expects {self.in_dim}-D descriptors but got shape {x.shape}: fit it "
                f"on descriptors from the same model (backbone and pooling) as the ones you apply it to"
            )
        out = whiten_rows(x2, self.projection, self.bias, what=f"whitening {self.method}")
        return out[0] if single else out

    def to_linear(self) -> Any:
        """The whitening as a model layer (:class:`retrievalkit.model.WhiteningLayer`, an affine
        map with weight ``P`` and bias ``-P m`` kept in float64).

        ``RetrievalModel.set_whitening(w.to_linear())`` makes the model output exactly
        ``apply``'s result: both run :func:`whiten_rows`.
        """
        from .model import WhiteningLayer

        return WhiteningLayer.from_arrays(self.projection, self.bias)

    def describe(self, file: str | Path | None = None) -> dict[str, Any]:
        """A short record for the ``meta`` of descriptors whitened with this whitening."""
        record: dict[str, Any] = {"method": self.method, "in_dim": self.in_dim, "out_dim": self.out_dim}
        if self.meta.get("source"):
            record["source"] = self.meta["source"]
        if file is not None:
            record["file"] = str(file)
        return record

    def save(self, path: str | Path) -> Path:
        """Write ``mean``, ``projection``, ``method`` and ``meta`` (JSON) to ``path`` (``.npz``),
        atomically."""
        meta = {**self.meta, "method": self.method, "in_dim": self.in_dim, "out_dim": self.out_dim}
        return save_npz(path, meta, WHITENING_FORMAT_VERSION, json_default=_jsonable, mean=self.mean,
                        projection=self.projection, method=np.asarray(self.method))

    @classmethod
    def load(cls, path: str | Path) -> FittedWhitening:
        """Read a whitening written by :meth:`save` (``rkit whiten fit``)."""
        arrays, meta = load_npz(path, ("mean", "projection", "method"), what="whitening file",
                                made_by="rkit whiten fit", format_version=WHITENING_FORMAT_VERSION)
        return cls(arrays["mean"], arrays["projection"], str(arrays["method"]), meta)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- choosing a method ---------------------------------------------------------------------

NEEDS_HELP = {
    "pairs": "matching and non-matching pairs: give labels (e.g. --labels folder) or a pairs file (--pairs FILE)",
    "labels": "a label per descriptor: give --labels folder or a labels file",
    "descriptors": "only descriptors",
}


def fit_whitening(spec: str | ComponentSpec, data: WhiteningData, dim: int | None = None,
                  host: Any | None = None) -> FittedWhitening:
    """Learn the whitening named by ``spec`` (``none``, ``pca``, ``learned:rotation=all`` ...).

    ``dim`` is the output dimension (``None``: every meaningful direction); it may also be
    written in the spec (``pca:dim=128``), but not both with different values. A method that
    needs pairs gets them from ``data.labels`` when no pairs were given.
    """
    from .plugins import get_host

    if isinstance(spec, str):
        spec = ComponentSpec.parse(spec)
    if dim is not None and "dim" in spec.options and spec.options["dim"] != str(dim):
        raise RkitError(f"two output dimensions given: dim={dim} and {spec}: give only one")
    host = host or get_host()
    method = host.build("whitening", spec, **({"dim": dim} if dim is not None else {}))
    needs = getattr(method, "needs", "descriptors")
    if needs == "pairs":
        data = data.with_pairs_from_labels()
        if data.positive_pairs is None and data.negative_pairs is None:
            raise RkitError(f"whitening {spec.name!r} needs {NEEDS_HELP['pairs']}")
    elif needs == "labels" and data.labels is None:
        raise RkitError(f"whitening {spec.name!r} needs {NEEDS_HELP['labels']}")
    return method.fit(data)
