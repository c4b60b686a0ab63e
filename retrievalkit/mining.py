"""Mining training tuples from a training database (Radenović et al. 2016, sec. 3.2; docs/definitions.md §4).

Miners are plugins (``rkit_miners`` hook). A miner factory returns an object following one of
the two protocols below. Everything is plain integer indices of database images
(``TrainingDatabase.images``); :func:`retrievalkit.tuples.assemble_tuples` joins them into
``(q, p, n_1 .. n_N)`` rows, so any positive miner combines with any negative miner and any loss.

Every miner has ``role`` (``"positive"`` or ``"negative"``), ``needs_descriptors`` (the trainer
must extract descriptors with the current network before mining) and ``needs_points`` (it reads
the 3D points, so a database imported from a ``db.pkl`` cannot serve it; checked before training).

Positive miners (``role == "positive"``)::

    mine(queries, db, descriptors, rng) -> positives

``queries`` int ``(Q,)``; ``db`` the :class:`~retrievalkit.trainingdb.TrainingDatabase`;
``descriptors`` the float32 L2-normalised descriptors of the database images computed with
the current network, indexed by database index like a ``(len(db), D)`` array (``None`` when
``needs_descriptors`` is False). The trainer passes a :class:`DescriptorRows` holding only the
queries, their co-observing images M(q) and the negative pool (``descriptors[i]``,
``descriptors[ids]`` work; ``np.asarray(descriptors)`` gives a dense copy); tests may pass a
plain array; ``rng`` a ``numpy.random.Generator`` (the only source of randomness). Returns int
``(Q,)``: one positive per query, ``-1`` where the query has no admissible positive (the
trainer then drops that query for the epoch).

Negative miners (``role == "negative"``)::

    mine(queries, db, descriptors, num_negatives, rng, pool=None) -> negatives

returns int ``(Q, num_negatives)``. ``pool`` (int array) restricts the candidates to a subset of
the database (the paper draws a random pool every epoch); ``None`` means every image. A
negative is never from the query's 3D model (cluster). If the pool holds fewer than
``num_negatives`` images outside the query's model, :class:`NotEnoughNegatives` is raised:
the trainer checks this before any work (:func:`check_database`).

Descriptor-based miners find nearest neighbours through :mod:`retrievalkit.index` (one exact
search for all queries, :func:`nearest_neighbours` / :class:`PoolSearch`), never a Python loop
over the pool, and search only as deep as they need (:func:`negatives_from_distinct_models`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, Union, runtime_checkable

import numpy as np

from .errors import RkitError
from .trainingdb import TrainingDatabase


class NotEnoughNegatives(RkitError):
    """The negative pool is too small for the requested number of negatives."""


@runtime_checkable
class PositiveMiner(Protocol):
    """Chooses one matching image per query (m1, m2, m3, random-positive)."""

    role: Literal["positive"]
    needs_descriptors: bool
    needs_points: bool

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             rng: np.random.Generator) -> np.ndarray: ...


@runtime_checkable
class NegativeMiner(Protocol):
    """Chooses ``num_negatives`` non-matching images per query (n1, n2, random-negative)."""

    role: Literal["negative"]
    needs_descriptors: bool
    needs_points: bool

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             num_negatives: int, rng: np.random.Generator,
             pool: np.ndarray | None = None) -> np.ndarray: ...


class DescriptorRows:
    """Descriptors of some database images, indexed by database index like a ``(len(db), D)`` array.

    The trainer extracts only the images an epoch's mining needs (queries, their M(q), the
    pool); this holds just those rows plus one int per database image, instead of a mostly-zero
    ``(len(db), D)`` matrix. ``rows[i]`` / ``rows[array]`` give the descriptors of database
    images; asking for an image that was not extracted is an error (a miner bug).
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, size: int) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.row_of = np.full(size, -1, dtype=np.int64)
        self.row_of[self.ids] = np.arange(len(self.ids))
        self.shape = (size, self.vectors.shape[1])
        self.ndim = 2
        self.dtype = self.vectors.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | np.ndarray) -> np.ndarray:
        rows = self.row_of[index]
        if np.any(rows < 0):
            missing = np.asarray(index).reshape(-1)[np.asarray(rows).reshape(-1) < 0][:5]
            raise RkitError(f"a miner asked for the descriptors of database images {missing.tolist()}, "
                            f"which the trainer did not extract (only the queries, their co-observing "
                            f"images and the pool are)")
        return self.vectors[rows]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        dense = np.zeros(self.shape, dtype=np.float32)
        dense[self.ids] = self.vectors
        return dense if dtype is None else dense.astype(dtype)


Descriptors = Union[np.ndarray, DescriptorRows]


def require_descriptors(descriptors: Descriptors | None, db: TrainingDatabase, who: str) -> Descriptors:
    """``descriptors`` as float32 ``(len(db), D)`` (array or :class:`DescriptorRows`); a clear
    error when missing or misshapen."""
    if descriptors is None:
        raise RkitError(f"the {who} miner ranks images by descriptor: the trainer must extract the "
                        f"pool's descriptors first (its needs_descriptors is True)")
    if not isinstance(descriptors, DescriptorRows):
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if len(descriptors.shape) != 2 or descriptors.shape[0] != len(db):
        raise RkitError(f"the {who} miner needs one descriptor per database image ({len(db)}), "
                        f"got an array of shape {descriptors.shape}")
    return descriptors


def resolve_pool(db: TrainingDatabase, pool: np.ndarray | None) -> np.ndarray:
    """The candidate negatives: ``pool`` (sorted, unique) or every database image."""
    if pool is None:
        return np.arange(len(db), dtype=np.int64)
    return np.unique(np.asarray(pool, dtype=np.int64))


def negatives_available(db: TrainingDatabase, queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each query, how many pool images lie outside its 3D model."""
    pool_clusters = db.clusters[pool]
    counts = {int(c): int(n) for c, n in zip(*np.unique(pool_clusters, return_counts=True))}
    query_clusters = db.clusters[np.asarray(queries, dtype=np.int64)]
    return np.asarray([len(pool) - counts.get(int(c), 0) for c in query_clusters], dtype=np.int64)


def check_enough_negatives(db: TrainingDatabase, queries: np.ndarray, pool: np.ndarray, num_negatives: int) -> None:
    """Raise :class:`NotEnoughNegatives` if some query has fewer than ``num_negatives`` candidates."""
    available = negatives_available(db, queries, pool)
    if len(available) and available.min() < num_negatives:
        worst = int(np.asarray(queries)[int(available.argmin())])
        raise NotEnoughNegatives(
            f"{num_negatives} negatives per query were asked for, but query {db.images[worst]} has only "
            f"{int(available.min())} candidate images outside its 3D model in the pool "
            f"({len(pool)} images, {len(np.unique(db.clusters[pool]))} models). Lower --num-negatives, "
            f"enlarge --pool-size, or use a database with more 3D models."
        )


def prepare_negatives(db: TrainingDatabase, queries: np.ndarray, pool: np.ndarray | None,
                      num_negatives: int) -> tuple[np.ndarray, np.ndarray]:
    """What every negative miner starts with: the queries as int64 and the resolved pool
    (:func:`resolve_pool`), checked to hold ``num_negatives`` candidates outside each query's
    model (:func:`check_enough_negatives`)."""
    queries = np.asarray(queries, dtype=np.int64)
    pool = resolve_pool(db, pool)
    check_enough_negatives(db, queries, pool, num_negatives)
    return queries, pool


def nearest_neighbours(descriptors: Descriptors, queries: np.ndarray, candidates: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidates closest to each query by inner product (= Euclidean for L2-normalised).

    One exact search (:func:`retrievalkit.index.build_index` ``flat`` and
    :func:`retrievalkit.index.search`) over ``descriptors[candidates]`` for all queries.
    Returns ``(similarities (Q, k), ids (Q, k))`` with ids as database indices, best first;
    ``-1`` where fewer than ``k`` candidates exist.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.int64)
    k = int(min(k, len(candidates)))
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return PoolSearch(descriptors, candidates).search(descriptors[queries], k)


class PoolSearch:
    """An exact index over the descriptors of ``candidates`` (database indices), built once and
    searched as deep as a miner needs (:func:`retrievalkit.index.search`)."""

    def __init__(self, descriptors: Descriptors, candidates: np.ndarray) -> None:
        from .index import build_index

        self.candidates = np.asarray(candidates, dtype=np.int64)
        self.index = build_index(descriptors[self.candidates], "flat")

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, database ids)`` ``(Q, min(k, candidates))``, best first."""
        from .index import search

        sims, local = search(self.index, query_vectors, k)
        ids = np.where(local >= 0, self.candidates[np.clip(local, 0, None)], -1)
        return sims, ids


def _drop_own_model(db: TrainingDatabase, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ranked ids with the query's own model (and empty slots) removed; ``-1`` padding at the end."""
    same_model = (ids < 0) | (db.clusters[np.clip(ids, 0, None)] == db.clusters[queries][:, None])
    order = np.argsort(same_model, axis=1, kind="stable")  # valid ids first, rank order kept
    return np.take_along_axis(np.where(same_model, -1, ids), order, axis=1)


def ranked_negatives(db: TrainingDatabase, descriptors: Descriptors, queries: np.ndarray,
                     pool: np.ndarray, k: int) -> np.ndarray:
    """The pool images nearest to each query with the query's own model removed, ``(Q, <=k)``.

    Searches ``k`` plus the size of the largest model in the pool, so that after removing the
    query's model at least ``k`` remain (when the pool has them); removed slots become ``-1``
    and are pushed to the end of each row.
    """
    largest_model = int(np.unique(db.clusters[pool], return_counts=True)[1].max()) if len(pool) else 0
    _, ids = nearest_neighbours(descriptors, queries, pool, k + largest_model)
    return _drop_own_model(db, queries, ids)[:, :k]


def negatives_from_distinct_models(db: TrainingDatabase, descriptors: Descriptors, queries: np.ndarray,
                                   pool: np.ndarray, count: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """For each query, the nearest pool image of each of the ``count`` nearest other models.

    Searches only as deep as needed: first ``4 count`` plus the largest model of the pool, then
    4x deeper for the queries still short of ``count`` models, up to the whole pool. Returns
    ``(chosen (Q, count) with -1 where the pool holds fewer models, {row: full ranking minus
    the query's model}`` for those short rows).
    """
    queries = np.asarray(queries, dtype=np.int64)
    chosen = np.full((len(queries), count), -1, dtype=np.int64)
    short: dict[int, np.ndarray] = {}
    if len(queries) == 0 or count == 0:
        return chosen, short
    searcher = PoolSearch(descriptors, pool)
    largest_model = int(np.unique(db.clusters[pool], return_counts=True)[1].max())
    depth, todo = min(len(pool), 4 * count + largest_model), np.arange(len(queries))
    while len(todo):
        _, ids = searcher.search(descriptors[queries[todo]], depth)
        ranked = _drop_own_model(db, queries[todo], ids)
        picked = first_per_model(db, ranked, count)
        finished = (picked >= 0).all(axis=1) | (depth >= len(pool))
        chosen[todo[finished]] = picked[finished]
        short.update({int(todo[r]): ranked[r] for r in np.flatnonzero(finished & (picked < 0).any(axis=1))})
        todo = todo[~finished]
        depth = min(len(pool), 4 * depth)
    return chosen, short


def first_per_model(db: TrainingDatabase, ranked: np.ndarray, count: int) -> np.ndarray:
    """From each row of ranked ids (``-1`` = empty), keep the first image of each model.

    Returns ``(Q, count)`` filled with ``-1`` where the row holds fewer than ``count`` models.
    Vectorised: an id is kept when it is the first occurrence of its (row, model) pair.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    num_rows, width = ranked.shape
    clusters = np.where(ranked >= 0, db.clusters[np.clip(ranked, 0, None)], -1)
    # one key per (row, model); np.unique's return_index gives each key's first (best) position
    keys = np.repeat(np.arange(num_rows, dtype=np.int64), width) * (int(db.clusters.max()) + 2) \
        + clusters.ravel() + 1
    first = np.zeros(num_rows * width, dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    first = first.reshape(num_rows, width) & (ranked >= 0)
    order = np.argsort(~first, axis=1, kind="stable")
    kept = np.take_along_axis(np.where(first, ranked, -1), order, axis=1)[:, :count]
    if kept.shape[1] < count:
        kept = np.pad(kept, ((0, 0), (0, count - kept.shape[1])), constant_values=-1)
    return kept


def candidate_lists(db: TrainingDatabase, queries: Sequence[int]) -> list[np.ndarray]:
    """M(q) for each query (docs/definitions.md §4)."""
    return [db.co_observing(int(q)) for q in queries]


def one_per_query(queries: Sequence[int], candidates: Sequence[np.ndarray],
                  choose: Callable[[int, np.ndarray], int]) -> np.ndarray:
    """What every positive miner returns: for each query ``q`` with a non-empty candidate list
    ``c``, ``c[choose(q, c)]``; ``-1`` for a query without candidates."""
    positives = np.full(len(queries), -1, dtype=np.int64)
    for row, (q, options) in enumerate(zip(queries, candidates)):
        if len(options):
            positives[row] = options[choose(int(q), options)]
    return positives
