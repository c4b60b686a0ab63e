"""Searching a descriptors database, and the result formats: ``rkit search`` as library calls.

The data path's last step before metrics: descriptors (:class:`DescriptorSet`) -> an index
(:mod:`retrievalkit.index`, the one place neighbours are computed) -> :class:`SearchResults`
-> text in one of :data:`FORMATS`::

    database = DescriptorSet.load("db.npz")
    results = search_database(database, load_queries(["q.npz"]), k=10)
    text = format_results(results, "tsv")          # or "json"; rows: results.rows()

A new output format is one function ``(SearchResults) -> str`` added to :data:`FORMATS`
(``rkit search --format NAME`` offers every key).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .descriptors import DescriptorSet
from .errors import RkitError


@dataclasses.dataclass(frozen=True)
class Hit:
    """One database image found for a query (``rank`` from 1)."""

    rank: int
    path: str
    score: float
    id: int


@dataclasses.dataclass
class SearchResults:
    """The top-k database images of each query.

    Attributes:
        query_names: one name (path) per query.
        scores: ``(Q, k)`` similarities, best first.
        ids: ``(Q, k)`` database row numbers; ``-1`` where an approximate index found fewer.
        database_paths: the database's image paths (row number -> path).
        root: the folder those paths are relative to, from the database's meta.
        info: facts recorded with the results (database file, k, index kind).
    """

    query_names: list[str]
    scores: np.ndarray
    ids: np.ndarray
    database_paths: list[str]
    root: str | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def hits(self) -> list[list[Hit]]:
        """Per query, its hits best first (slots an approximate index left empty dropped)."""
        return [
            [Hit(rank + 1, self.database_paths[i], float(s), i)
             for rank, (i, s) in enumerate(zip(id_row.tolist(), score_row.tolist())) if i >= 0]
            for id_row, score_row in zip(self.ids, self.scores)
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per (query, hit): ``query``, ``rank``, ``score``, ``path``, ``id``."""
        return [{"query": name, **dataclasses.asdict(hit)}
                for name, hits in zip(self.query_names, self.hits()) for hit in hits]


def load_queries(files: Sequence[str | Path | DescriptorSet], dim: int | None = None) -> DescriptorSet:
    """Stack several query sets (descriptors files, or :class:`DescriptorSet`s) into one.

    ``dim`` is the database's dimension, if the queries must match it.
    """
    sets = [f if isinstance(f, DescriptorSet) else DescriptorSet.load(f) for f in files]
    dims = sorted({s.dim for s in sets})
    if len(dims) > 1 or (dim is not None and dims and dims != [dim]):
        against = f"the database is {dim}-D" if dim is not None else "they must have one dimension"
        raise RkitError(f"query descriptors are {dims}-D but {against}: describe queries and database with "
                        f"the same model and whitening")
    if not sets:
        return DescriptorSet(np.zeros((0, dim or 0), np.float32), [])
    return DescriptorSet(np.concatenate([s.descriptors for s in sets]), [p for s in sets for p in s.paths])


def search_database(database: DescriptorSet, queries: DescriptorSet, k: int = 10, *, index: Any = None,
                    nprobe: int | None = None, info: dict[str, Any] | None = None) -> SearchResults:
    """The ``k`` most similar database images of each query.

    Args:
        database: the database descriptors.
        queries: the query descriptors (same dimension).
        k: results per query (at most the database size).
        index: a faiss index over ``database`` (:func:`retrievalkit.index.build_index` or
            :func:`~retrievalkit.index.load_index`); default an exact flat index built here.
        nprobe: IVF cells visited per query (IVF indexes).
        info: recorded in :attr:`SearchResults.info` (and in the JSON output).
    """
    from .index import build_index, search

    if queries.dim != database.dim:
        raise RkitError(f"query descriptors are {queries.dim}-D but the database is {database.dim}-D: describe "
                        f"queries and database with the same model and whitening")
    index = build_index(database.descriptors, "flat") if index is None else index
    scores, ids = search(index, queries.descriptors, k, nprobe=nprobe)
    return SearchResults(list(queries.paths), scores, ids, list(database.paths),
                         root=database.meta.get("root"), info=dict(info or {}))


# -- output formats ------------------------------------------------------------------------------
def to_tsv(results: SearchResults) -> str:
    """``query, rank, score, path`` per line, after a header line."""
    lines = ["query\trank\tscore\tpath"]
    lines += [f"{r['query']}\t{r['rank']}\t{r['score']:.6f}\t{r['path']}" for r in results.rows()]
    return "\n".join(lines) + "\n"


def to_json(results: SearchResults) -> str:
    """One JSON document: ``info``, ``root`` and per query its ranked ``neighbours``."""
    document = {**results.info, "root": results.root, "results": [
        {"query": name, "neighbours": [{"rank": h.rank, "path": h.path, "score": round(h.score, 6)} for h in hits]}
        for name, hits in zip(results.query_names, results.hits())
    ]}
    return json.dumps(document, indent=2) + "\n"


def to_hloc_pairs(results: SearchResults) -> str:
    """hloc's pairs-from-retrieval file (:func:`retrievalkit.hloc.results_to_pairs_text`)."""
    from .hloc import results_to_pairs_text

    return results_to_pairs_text(results)


#: format name -> writer; ``rkit search --format`` offers every key
FORMATS: dict[str, Callable[[SearchResults], str]] = {"tsv": to_tsv, "json": to_json, "hloc-pairs": to_hloc_pairs}


def format_results(results: SearchResults, out_format: str = "tsv") -> str:
    """The results as text in ``out_format`` (a key of :data:`FORMATS`)."""
    if out_format not in FORMATS:
        raise RkitError(f"unknown output format {out_format!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[out_format](results)
