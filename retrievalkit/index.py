"""Nearest-neighbour search over global descriptors with faiss.

Descriptors are L2-normalised, so the similarity is the dot product (docs/definitions.md §1) and every
index here uses faiss' inner-product metric:

``flat``   exact search (``IndexFlatIP``): the default, right up to a few million vectors.
``ivf``    inverted file (``IndexIVFFlat``): k-means into ``nlist`` cells, a query visits the
           ``nprobe`` closest cells. Approximate; needs at least ``nlist`` training vectors.
``ivfpq``  inverted file with product quantisation (``IndexIVFPQ``): each vector is stored as
           ``pq_m`` codes of ``nbits`` bits (``pq_m`` bytes at 8 bits), for databases that do
           not fit in memory as float32. Needs at least ``2**nbits`` training vectors and a
           dimension divisible by ``pq_m``.

For evaluation, :func:`rank_all` gives the full ranking of the database for every query with one
matrix product and an argsort per block of queries (never a Python loop over database images);
:func:`rank_all_scored` also returns the similarities of the first ranked images. This module is
the only place where neighbours are computed: evaluation, ``rkit search``, mining and SfM pair
selection all call it.

Every entry point refuses non-finite descriptors
(:func:`retrievalkit.descriptors.check_finite`): a NaN similarity sorts anywhere and silently
corrupts rankings.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from .atomic import atomic_path
from .descriptors import check_finite
from .errors import RkitError

INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "ivfpq")

#: Rows the OPQ rotation is learned on (faiss default 65,536): a D x D rotation needs far fewer,
#: and OPQ alternates PQ training and an SVD about 50 times, so this bounds its training time.
OPQ_TRAINING_POINTS = 16_384
#: faiss warns below this many training vectors per k-means centroid.
TRAINING_POINTS_PER_CELL = 39


def _as_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise RkitError(f"{what} must be a matrix (N, D), got an array of shape {array.shape}")
    check_finite(array, what)
    return np.ascontiguousarray(array, dtype=np.float32)


def default_nlist(n_vectors: int) -> int:
    """A number of IVF cells for ``n_vectors``: about 4 sqrt(N), with >= 39 vectors per cell."""
    return max(1, min(int(4 * math.sqrt(n_vectors)), n_vectors // TRAINING_POINTS_PER_CELL))


def _check_ivf_params(kind: str, n: int, dim: int, nlist: int | None, pq_m: int | None,
                      nbits: int) -> tuple[int, int | None]:
    """Validated ``(nlist, pq_m)`` for an ``ivf``/``ivfpq`` index trained on ``n`` vectors."""
    nlist = default_nlist(n) if nlist is None else int(nlist)
    if nlist < 1:
        raise RkitError(f"--nlist must be at least 1, got {nlist}")
    if n < nlist:
        raise RkitError(
            f"an {kind} index with nlist={nlist} cells needs at least {nlist} training vectors "
            f"({TRAINING_POINTS_PER_CELL * nlist} recommended), but the database has only {n}: "
            f"use a smaller --nlist (at most {n}; {default_nlist(n)} suits {n} vectors) or --index flat "
            f"(exact, and fast at this size)"
        )
    if kind != "ivfpq":
        return nlist, None
    if pq_m is None:   # sub-vectors of >= 8 dimensions: faiss trains 4-D ones ~10x slower
        pq_m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0 and (dim // m >= 8 or m == 1))
    if pq_m < 1 or dim % pq_m:
        raise RkitError(
            f"--pq-m {pq_m} does not divide the descriptor dimension {dim}: choose a divisor "
            f"of {dim} (e.g. {', '.join(str(m) for m in (8, 16, 32, 64) if dim % m == 0) or 1})"
        )
    if n < 2 ** nbits:
        raise RkitError(
            f"an ivfpq index with {nbits}-bit codes needs at least {2 ** nbits} training vectors "
            f"to learn its codebooks, but the database has only {n}: use --index ivf or flat"
        )
    return nlist, pq_m


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The inverted-file part of ``index`` (also inside an OPQ pre-transform), or None."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        return None


def train_index(training: np.ndarray, kind: str = "flat", *, nlist: int | None = None,
                pq_m: int | None = None, nbits: int = 8, opq: bool = False, nprobe: int | None = None,
                seed: int = 1234, n_database: int | None = None) -> faiss.Index:
    """An empty inner-product index trained on ``training`` (N, D); add vectors with ``.add``.

    ``n_database`` (default N) sizes the default ``nlist`` when the training vectors are a
    sample of a larger database. ``opq`` rotates the vectors before product quantisation
    (OPQ, Ge et al. CVPR 2013), learned with the codebooks (``ivfpq`` only).
    """
    data = _as_matrix(training, "the training descriptors")
    n, dim = data.shape
    if n == 0:
        raise RkitError("the database is empty: there is nothing to index; extract some images first")
    if kind not in INDEX_KINDS:
        raise RkitError(f"unknown index kind {kind!r}: choose one of {', '.join(INDEX_KINDS)}")
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if opq and kind != "ivfpq":
        raise RkitError("--opq rotates vectors for product quantisation: use it with --index ivfpq")
    if nlist is None:
        nlist = min(default_nlist(n_database or n), n)
    nlist, pq_m = _check_ivf_params(kind, n, dim, nlist, pq_m, nbits)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
    # One clear warning from us instead of faiss' per-sub-quantiser messages on stderr.
    recommended = TRAINING_POINTS_PER_CELL * max(nlist, 2 ** nbits if kind == "ivfpq" else 0)
    if n < recommended:
        warnings.warn(
            f"training the {kind} index on {n} vectors; faiss recommends at least {recommended} "
            f"for nlist={nlist}" + (f" and {nbits}-bit codes" if kind == "ivfpq" else "")
            + ": expect lower recall (or use --index flat)", stacklevel=2)
    for params in [ivf.cp] + ([ivf.pq.cp] if kind == "ivfpq" else []):
        params.seed = seed
        params.min_points_per_centroid = 1
    index: faiss.Index = ivf
    if opq:
        rotation = faiss.OPQMatrix(dim, pq_m)
        rotation.pq = codebooks = faiss.ProductQuantizer(dim, pq_m, nbits)   # our seed, no warnings
        codebooks.cp.seed, codebooks.cp.min_points_per_centroid = seed, 1
        rotation.referenced_objects = [codebooks]
        rotation.max_train_points = OPQ_TRAINING_POINTS
        index = faiss.IndexPreTransform(rotation, ivf)
    index.train(data)
    ivf.nprobe = min(nlist, 16) if nprobe is None else max(1, int(nprobe))
    return index


def build_index(vectors: np.ndarray, kind: str = "flat", *, nlist: int | None = None,
                pq_m: int | None = None, nbits: int = 8, nprobe: int | None = None,
                seed: int = 1234, opq: bool = False) -> faiss.Index:
    """Build an inner-product faiss index over ``vectors`` (N, D) and add them (ids 0..N-1).

    Args:
        vectors: the database descriptors, one row per image.
        kind: ``flat`` (exact), ``ivf`` or ``ivfpq`` (approximate); see the module docstring.
        nlist: IVF cells; default :func:`default_nlist`.
        pq_m: PQ sub-quantisers (= bytes per vector at 8 bits) for ``ivfpq``; must divide D.
            Default: the largest of 64, 32, 16, 8, 4, 2, 1 that divides D into sub-vectors of at
            least 8 dimensions (128-D -> 16, 2048-D -> 64).
        nbits: bits per PQ code (``ivfpq``).
        nprobe: cells visited per query (IVF kinds); default ``min(nlist, 16)``.
        seed: k-means seed, so the same data gives the same index.
        opq: learn an OPQ rotation before the product quantiser (``ivfpq``).

    Raises:
        RkitError: unknown kind, or too few vectors to train the IVF / PQ quantisers.
    """
    data = _as_matrix(vectors, "the database descriptors")
    index = train_index(data, kind, nlist=nlist, pq_m=pq_m, nbits=nbits, opq=opq, nprobe=nprobe, seed=seed)
    index.add(data)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar database vectors of each query.

    Returns ``(scores, ids)``, both ``(Q, k')`` with ``k' = min(k, index.ntotal)``, sorted by
    decreasing score; ids are row numbers of the database. An approximate index may find fewer
    than ``k'`` neighbours for a query: those slots have id ``-1`` and score ``-inf``.
    """
    query_matrix = _as_matrix(queries, "the query descriptors")
    if query_matrix.shape[1] != index.d:
        raise RkitError(
            f"the queries have {query_matrix.shape[1]} dimensions but the index {index.d}: "
            f"describe queries and database with the same model and whitening"
        )
    if k < 1:
        raise RkitError(f"k must be at least 1, got {k}")
    k = min(int(k), int(index.ntotal))
    ivf = ivf_of(index)
    if nprobe is not None and ivf is not None:
        ivf.nprobe = max(1, int(nprobe))
    scores, ids = index.search(query_matrix, k)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids.astype(np.int64)


def rerank_exact(queries: np.ndarray, shortlist: np.ndarray, rows: Callable[[np.ndarray], np.ndarray],
                 k: int, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's ``shortlist`` (Q, R) ids by the exact inner product; keep the top ``k``.

    ``rows(ids)`` returns the float32 descriptors of ``ids`` (a (b, R) array) with shape
    ``(b, R, D)``, e.g. :meth:`retrievalkit.store.DescriptorSource.rows` over a memory map, so
    the float matrix is never loaded whole. Ids ``-1`` (no candidate) stay last with ``-inf``.
    Returns ``(scores, ids)`` ``(Q, min(k, R))`` sorted by decreasing exact score. Queries go
    ``block`` at a time: small gathered blocks stay in the CPU caches (256 was 1.5x slower).
    """
    query_matrix = _as_matrix(queries, "the query descriptors")
    shortlist = np.asarray(shortlist, dtype=np.int64)
    width = min(int(k), shortlist.shape[1])
    out_scores = np.empty((shortlist.shape[0], width), dtype=np.float32)
    out_ids = np.empty((shortlist.shape[0], width), dtype=np.int64)
    for start in range(0, shortlist.shape[0], block):
        ids = shortlist[start:start + block]
        vectors = rows(np.maximum(ids, 0))
        exact = np.matmul(vectors, query_matrix[start:start + block, :, None])[..., 0]
        exact = np.where(ids < 0, -np.inf, exact)
        order = np.lexsort((ids, -exact), axis=-1)[:, :width]
        out_scores[start:start + block] = np.take_along_axis(exact, order, 1)
        out_ids[start:start + block] = np.take_along_axis(ids, order, 1)
    return out_scores, out_ids


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(scores, ids)`` results (ids already global) into the exact top ``k``.

    Every shard's list is sorted, so the best ``k`` of their union is the best ``k`` overall:
    the merge of a sharded flat search equals the unsharded search. Ties go to the lower id.
    """
    scores = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _query_blocks(n_queries: int, n_database: int, budget: int = 2 ** 26) -> Iterator[slice]:
    """Slices of queries whose (block, N) similarity matrix stays under ``budget`` entries."""
    step = max(1, budget // max(1, n_database))
    for start in range(0, n_queries, step):
        yield slice(start, min(n_queries, start + step))


def rank_all(database: np.ndarray, queries: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """Full rankings: row ``q`` lists every database row by decreasing similarity to query ``q``.

    One matrix product and an argsort per block of queries. Ties keep the database order
    (stable sort), so the result is deterministic.

    Args:
        database: ``(N, D)`` descriptors.
        queries: ``(Q, D)`` descriptors.
        exclude_self: the queries *are* the database (``Q == N``, query ``i`` is row ``i``); each
            query's own row is left out (by its row number, whatever its score), so the result
            is ``(N, N - 1)``.

    Returns:
        ``(Q, N)`` (or ``(N, N - 1)``) int64 database row numbers.
    """
    return rank_all_scored(database, queries, exclude_self=exclude_self, top=0)[0]


def rank_all_scored(database: np.ndarray, queries: np.ndarray, *, exclude_self: bool = False,
                    top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_all` plus the similarities of the first ``top`` ranked images of each query.

    Returns ``(rankings, scores)``: ``rankings`` as :func:`rank_all`, ``scores`` float32
    ``(Q, min(top, width))`` (all ``width`` columns when ``top`` is None), from the same matrix
    product that ranked them.
    """
    db = _as_matrix(database, "the database descriptors")
    q = _as_matrix(queries, "the query descriptors")
    if db.shape[1] != q.shape[1]:
        raise RkitError(
            f"the queries have {q.shape[1]} dimensions but the database {db.shape[1]}: "
            f"describe both with the same model and whitening"
        )
    if exclude_self and q.shape[0] != db.shape[0]:
        raise ValueError("exclude_self needs the queries to be the database rows")
    n = db.shape[0]
    width = max(n - 1 if exclude_self else n, 0)
    kept = width if top is None else min(int(top), width)
    ranking = np.empty((q.shape[0], width), dtype=np.int64)
    scores = np.empty((q.shape[0], kept), dtype=np.float32)
    for block in _query_blocks(q.shape[0], n):
        similarity = q[block] @ db.T
        order = np.argsort(-similarity, axis=1, kind="stable")
        if exclude_self:   # drop each query's own row by its number (not by its score)
            own = np.arange(block.start, block.stop)[:, None]
            order = order[order != own].reshape(order.shape[0], width)
        ranking[block] = order
        scores[block] = np.take_along_axis(similarity, order[:, :kept], axis=1)
    return ranking, scores


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write a faiss index to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def load_index(path: str | Path, *, expected_size: int | None = None,
               expected_dim: int | None = None) -> faiss.Index:
    """Read an index written by :func:`save_index`, checking it matches the descriptors file."""
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"index file {path} does not exist: build it with `rkit search ... --save-index {path}`")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise RkitError(f"{path} is not a faiss index file ({str(exc).splitlines()[0]}): rebuild it with --save-index") from exc
    if expected_size is not None and index.ntotal != expected_size:
        raise RkitError(
            f"index {path} holds {index.ntotal} vectors but the descriptors file has {expected_size}: "
            f"it was built from another database; rebuild it with --save-index"
        )
    if expected_dim is not None and index.d != expected_dim:
        raise RkitError(
            f"index {path} has dimension {index.d} but the descriptors have {expected_dim}: "
            f"rebuild it with --save-index"
        )
    return index
