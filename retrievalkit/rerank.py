"""Re-ranking: the sixth kind of component (``rkit_rerankers``), chained as ``dba+aqe``.

A re-ranker changes the descriptors a search compares, then the search runs again:

* a **database-side** step (``augment_database(database, neighbours) -> database'``), such as
  DBA, replaces every database vector. It depends only on the database, so a chain computes it
  once per database and caches the result (in memory and under ``$RKIT_CACHE/rerank/``), keyed
  by a hash of the database matrix and the step's resolved options (:func:`array_fingerprint`);
* a **query-side** step (``expand_queries(queries, neighbours, self_rows) -> queries'``), such
  as alpha-QE, replaces every query vector using its neighbours in the (augmented) database.

A chain is written ``NAME[:OPTION=VALUE...]`` joined by ``+`` (``dba:k=3+aqe:alpha=3``); database
steps run before query steps, each side in the written order; ``none`` is the empty chain.
``neighbours(vectors, k, self_rows=None) -> (scores, ids)`` (a :class:`Neighbours`, whose
``.database`` is the matrix searched) is the exact top ``k`` of the current database (ids ``-1`` / scores ``-inf`` where fewer exist); with ``self_rows`` the row
``self_rows[i]`` is left out of vector ``i``'s neighbours (the vector *is* that database row).

When the queries are the database rows (folder collections, ``exclude_self``), the database
steps change the queries too, and query steps leave each query's own row out of its neighbours.

The shared formula of both built-ins, :func:`weighted_expansion`, is alpha-weighted query
expansion (Radenović, Tolias, Chum, TPAMI 2018, sec. 5.2): ``v' = normalise(v + sum_i
max(s_i, 0)^alpha x_i)`` over the ``k`` nearest database vectors ``x_i`` with similarities
``s_i``; the vector itself has weight ``1 = 1^alpha``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import RkitError

NONE = "none"
_MEMORY_CACHE: dict[str, np.ndarray] = {}
_MEMORY_CACHE_ENTRIES = 8


class Reranker(Protocol):
    """What a ``rkit_rerankers`` factory returns: one or both of these methods."""

    def augment_database(self, database: np.ndarray, neighbours: Neighbours) -> np.ndarray: ...

    def expand_queries(self, queries: np.ndarray, neighbours: Neighbours,
                       self_rows: np.ndarray | None) -> np.ndarray: ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, float32 (the one L2 step: :func:`retrievalkit.descriptors.l2_normalize`)."""
    from .descriptors import l2_normalize

    return l2_normalize(vectors).astype(np.float32)


def weighted_expansion(vectors: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, ids: np.ndarray,
                       alpha: float) -> np.ndarray:
    """``normalise(v + sum_i max(s_i, 0)^alpha x_i)`` per row (the module docstring's formula).

    ``neighbours`` ``(Q, k, D)`` are the vectors ``x_i`` of ``ids`` ``(Q, k)`` (``-1``: none,
    weight 0) with similarities ``scores``.
    """
    weights = np.where(ids < 0, 0.0, np.maximum(scores, 0.0) ** alpha).astype(np.float32)
    return l2_normalise(np.asarray(vectors, np.float32) + np.einsum("qk,qkd->qd", weights, neighbours))


class Neighbours:
    """Top-``k`` search in ``database`` and row look-up: exact (faiss flat inner product) unless
    ``index``, a faiss index of the same rows (e.g. IVF-PQ over a million distractors), is given."""

    def __init__(self, database: np.ndarray, index: Any = None) -> None:
        from .index import build_index

        self.database = np.ascontiguousarray(database, dtype=np.float32)
        self.index = build_index(self.database) if index is None else index

    def _top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from .index import search

        return search(self.index, vectors, k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The database vectors of ``ids`` (``ids.shape + (D,)``; -1 gives row 0, weight it 0)."""
        return self.database[np.maximum(ids, 0)]

    def __call__(self, vectors: np.ndarray, k: int, self_rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._top(vectors, k + (self_rows is not None))
        if self_rows is not None:
            keep = ids != np.asarray(self_rows)[:, None]
            keep[keep.sum(axis=1) > k, -1] = False                    # self not found: drop the last
            scores = scores[keep].reshape(len(ids), -1)
            ids = ids[keep].reshape(len(ids), -1)
        return _pad(scores, ids, k)


class IndexNeighbours(Neighbours):
    """Neighbours from a saved :class:`~retrievalkit.searchindex.SearchIndex` (rows memory-mapped)."""

    def __init__(self, index: Any) -> None:
        self.search_index = index

    def _top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search_index.search(vectors, k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.search_index.source.rows(np.maximum(ids, 0))


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - ids.shape[1]
    if missing <= 0:
        return scores[:, :k], ids[:, :k]
    return (np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, missing)), constant_values=-1))


def array_fingerprint(array: np.ndarray) -> str:
    """A hash of a matrix's shape and contents (float32)."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    digest = hashlib.blake2b(str(data.shape).encode(), digest_size=16)
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


@dataclasses.dataclass
class Step:
    spec: str            # as resolved: NAME:OPTION=VALUE for every option
    reranker: Any

    @property
    def on_database(self) -> bool:
        return callable(getattr(self.reranker, "augment_database", None))

    @property
    def on_queries(self) -> bool:
        return callable(getattr(self.reranker, "expand_queries", None))


class RerankChain:
    """Re-rankers chosen by ``spec`` (``dba+aqe:k=2``), built through the plugin host."""

    def __init__(self, spec: str | Sequence[str] | None = None, *, cache: bool = True) -> None:
        from .components import ComponentSpec, validate_options
        from .plugins import get_host

        texts = [spec] if isinstance(spec, str) or spec is None else list(spec)
        parts = [p.strip() for text in texts for p in (text or "").split("+") if p.strip()]
        self.steps: list[Step] = []
        host = get_host()
        for part in parts:
            parsed = ComponentSpec.parse(part)
            if parsed.name == NONE:
                continue
            known = host.get("reranker", parsed.name).component.options()
            options = {name: option.default for name, option in known.items()}
            options.update(validate_options(parsed.name, known, parsed.options))   # typed: k=2 == k=2.0
            reranker = host.build("reranker", parsed)
            shown = {k: format(v, "g") if isinstance(v, float) else v for k, v in options.items()}
            resolved = ":".join([parsed.name, *(f"{k}={shown[k]}" for k in sorted(shown))])
            step = Step(resolved, reranker)
            if not (step.on_database or step.on_queries):
                raise RkitError(f"re-ranker {parsed.name!r} has neither augment_database nor expand_queries: "
                                f"its plugin does not follow the rkit_rerankers hook specification")
            self.steps.append(step)
        self.cache = cache

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __str__(self) -> str:
        return "+".join(step.spec for step in self.steps) or NONE

    def transform_database(self, database: np.ndarray,
                           neighbours: Callable[[np.ndarray], Neighbours] = Neighbours,
                           searched_by: str = "exact", remember: bool = True) -> np.ndarray:
        """The database after every database-side step (cached per database, steps and search).

        ``neighbours(matrix)`` searches a matrix (default exact); ``searched_by`` names how, so
        results of an approximate search are cached apart from exact ones. ``remember=False``
        skips both caches, for a caller that keeps the result itself (a saved index does).
        """
        current = np.ascontiguousarray(database, dtype=np.float32)
        key = array_fingerprint(current) if remember and self.on_database else ""
        if searched_by != "exact":
            key = hashlib.blake2b(f"{key}|{searched_by}".encode(), digest_size=16).hexdigest()
        for step in (s for s in self.steps if s.on_database):
            key = hashlib.blake2b(f"{key}|{step.spec}".encode(), digest_size=16).hexdigest()
            compute = lambda: step.reranker.augment_database(current, neighbours(current))  # noqa: E731
            current = self._cached(key, compute) if remember else np.ascontiguousarray(compute(), dtype=np.float32)
            if current.shape[0] != database.shape[0]:
                raise RkitError(f"re-ranker {step.spec} returned {current.shape[0]} database vectors for "
                                f"{database.shape[0]}: augment_database must keep one row per image")
        return current

    @property
    def on_database(self) -> bool:
        return any(step.on_database for step in self.steps)

    @property
    def database_spec(self) -> str:
        """The database-side steps, as resolved (``dba:alpha=3:k=2``; ``""`` for none)."""
        return "+".join(step.spec for step in self.steps if step.on_database)

    def transform_queries(self, queries: np.ndarray, database: np.ndarray | Neighbours,
                          self_rows: np.ndarray | None = None) -> np.ndarray:
        """The queries after every query-side step, searching ``database`` (already transformed)."""
        current = np.ascontiguousarray(queries, dtype=np.float32)
        steps = [s for s in self.steps if s.on_queries]
        if steps:
            neighbours = database if isinstance(database, Neighbours) else Neighbours(database)
            for step in steps:
                current = np.ascontiguousarray(step.reranker.expand_queries(current, neighbours, self_rows),
                                               dtype=np.float32)
        return current

    def _cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in _MEMORY_CACHE:
            return _MEMORY_CACHE[key]
        file = _cache_file(key) if self.cache else None
        if file is not None and file.is_file():
            try:
                result = np.load(file)
            except (OSError, ValueError):
                result = None
            if result is not None:
                return _remember(key, result)
        result = np.ascontiguousarray(compute(), dtype=np.float32)
        if file is not None:
            from .atomic import atomic_path

            try:
                with atomic_path(file) as tmp:
                    np.save(tmp, result)
            except OSError:
                pass   # a read-only cache only costs the recomputation
        return _remember(key, result)


def _remember(key: str, value: np.ndarray) -> np.ndarray:
    if len(_MEMORY_CACHE) >= _MEMORY_CACHE_ENTRIES:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    _MEMORY_CACHE[key] = value
    return value


def _cache_file(key: str) -> Path:
    from .cache import cache_dir

    return cache_dir() / "rerank" / f"{key}.npy"


def as_chain(rerank: str | RerankChain | None) -> RerankChain | None:
    """``None`` / ``"none"`` -> None; a spec -> its chain (empty chains become None)."""
    if rerank is None or isinstance(rerank, RerankChain):
        return rerank or None
    if all(part.strip().lower() in ("", NONE) for part in str(rerank).split("+")):
        return None                      # no plugin host (and no torch import) for "none"
    chain = RerankChain(rerank)
    return chain or None


def rank(database: np.ndarray, queries: np.ndarray, rerank: str | RerankChain | None = None, *,
         exclude_self: bool = False, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`retrievalkit.index.rank_all_scored` after re-ranking (the evaluation's one call).

    The scores returned are the similarities of the re-ranked vectors that produced the ranking.
    """
    from .index import rank_all_scored

    chain = as_chain(rerank)
    if chain is None:
        return rank_all_scored(database, queries, exclude_self=exclude_self, top=top)
    database = chain.transform_database(database)
    if exclude_self:
        queries = database
    self_rows = np.arange(len(database)) if exclude_self else None
    return rank_all_scored(database, chain.transform_queries(queries, database, self_rows),
                           exclude_self=exclude_self, top=top)
