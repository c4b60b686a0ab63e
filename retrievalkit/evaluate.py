"""Retrieval evaluation: average precision, mAP and mP@k (SPEC section 5).

Average precision follows the revisited Oxford/Paris protocol (Radenović, Iscen, Tolias, Avrithis,
Chum, *Revisiting Oxford and Paris*, CVPR 2018), the same trapezoid rule as the original Oxford
``compute_ap``:

1. junk images are removed from the ranking; ``r_k`` is the 0-based rank of the k-th positive
   (k = 1..K, in ranking order) in the ranking without junk;
2. the precision just before and at that positive are ``p_{k-1} = (k-1) / r_k`` (1 when
   ``r_k = 0``) and ``p_k = k / (r_k + 1)``;
3. ``AP = (1 / n_pos) * sum_k (p_{k-1} + p_k) / 2``, where ``n_pos`` counts *all* positives of
   the query, including any the ranking does not contain (they add no area).

mP@k is the revisited protocol's precision at k: ``k`` is capped at the (junk-free, 1-based)
rank of the last positive in the ranking, ``P@k = #{positives in the top k'} / k'`` with
``k' = min(k, rank of the last positive)``; so a query whose every positive is ranked in the top
k scores 1 even if it has fewer than k positives. (For k = 1 it is plain precision at 1.)

A query without any positive has no AP: it is left out of the means (``nan`` in the per-query
arrays), as the revisited protocol does.

Everything is vectorised over a ``(queries, ranking length)`` boolean matrix: there is no Python
loop over database images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RkitError
from .rerank import rank as rerank_rank

if TYPE_CHECKING:
    from .datasets import RevisitedDataset

#: The cut-offs of mP@k reported by default.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
#: How many ranked images per query a rankings file keeps.
RANKINGS_TOP = 100

#: status codes of ranked images (``EvaluationResult.top_status``)
NEGATIVE, POSITIVE, JUNK = 0, 1, 2
STATUS_NAMES = {NEGATIVE: "negative", POSITIVE: "positive", JUNK: "junk"}


# --------------------------------------------------------------------------------------------
# The formulas (one place)
# --------------------------------------------------------------------------------------------
def ranking_statistics(is_positive: np.ndarray, is_junk: np.ndarray | None, n_positives: np.ndarray,
                       ks: Sequence[int] = DEFAULT_KS) -> tuple[np.ndarray, np.ndarray]:
    """AP and mP@k of many rankings at once (the formulas of the module docstring).

    Args:
        is_positive: ``(Q, R)`` bool, entry ``[q, i]`` true when the i-th ranked image of query q
            is one of its positives.
        is_junk: ``(Q, R)`` bool or None; junk entries are removed before anything is counted
            (an entry both positive and junk counts as junk).
        n_positives: ``(Q,)`` number of positives of each query (may exceed those ranked).
        ks: the cut-offs of precision at k.

    Returns:
        ``ap`` ``(Q,)`` and ``precision`` ``(Q, len(ks))``, ``nan`` for queries without positives.
    """
    is_positive = np.atleast_2d(np.asarray(is_positive, dtype=bool))
    n_positives = np.atleast_1d(np.asarray(n_positives, dtype=np.float64))
    is_junk = None if is_junk is None else np.atleast_2d(np.asarray(is_junk, dtype=bool))
    if any(k < 1 for k in ks):
        raise RkitError(f"precision at k needs k >= 1, got {list(ks)}")
    ap = np.empty(is_positive.shape[0], dtype=np.float64)
    precision = np.empty((is_positive.shape[0], len(ks)), dtype=np.float64)
    step = max(1, _BLOCK_ENTRIES // max(1, is_positive.shape[1]))    # bound the temporaries' memory
    for start in range(0, is_positive.shape[0], step):
        rows = slice(start, start + step)
        ap[rows], precision[rows] = _statistics_block(
            is_positive[rows], None if is_junk is None else is_junk[rows], n_positives[rows], ks)
    return ap, precision


_BLOCK_ENTRIES = 2 ** 24


def _statistics_block(is_positive: np.ndarray, is_junk: np.ndarray | None, n_positives: np.ndarray,
                      ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The formulas over one block of queries, evaluated only at the positives' positions."""
    n_rows = is_positive.shape[0]
    positive = is_positive if is_junk is None else is_positive & ~is_junk
    query, column = np.nonzero(positive)              # row-major: by query, then by position
    if is_junk is None:
        rank = column.astype(np.int64)
    else:                                             # 0-based rank once junk is removed
        junk_so_far = np.cumsum(is_junk, axis=1, dtype=np.int64)
        rank = column - junk_so_far[query, column]
    found = np.bincount(query, minlength=n_rows)      # positives present in each ranking
    first = np.concatenate([[0], np.cumsum(found)[:-1]]).astype(np.int64)
    index = np.arange(query.size) - first[query]      # k - 1 for the k-th positive
    before = np.where(rank == 0, 1.0, index / np.maximum(rank, 1))    # p_{k-1}
    at = (index + 1) / (rank + 1)                                        # p_k
    area = np.bincount(query, weights=(before + at) / 2.0, minlength=n_rows)
    ap = np.where(n_positives > 0, area / np.maximum(n_positives, 1), np.nan)

    last = np.zeros(n_rows, dtype=np.int64)           # 1-based rank of the last positive
    has = found > 0
    last[has] = rank[first[has] + found[has] - 1] + 1
    precision = np.empty((n_rows, len(ks)), dtype=np.float64)
    for column_k, k in enumerate(ks):
        cut = np.minimum(last, k)
        hits = np.bincount(query, weights=(rank + 1 <= cut[query]).astype(np.float64), minlength=n_rows)
        precision[:, column_k] = np.where(cut > 0, hits / np.maximum(cut, 1), 0.0)
    precision[n_positives <= 0] = np.nan
    return ap, precision


def _membership(rankings: np.ndarray, members: Sequence[Sequence[int]], n_database: int) -> np.ndarray:
    """``(Q, R)`` bool: is ``rankings[q, i]`` in ``members[q]`` (ids < ``n_database``; -1 never)."""
    table = np.zeros((len(members), n_database + 1), dtype=bool)   # last column: id -1
    for q, ids in enumerate(members):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            table[q, ids] = True
    table[:, n_database] = False
    return np.take_along_axis(table, np.where(rankings < 0, n_database, rankings), axis=1)


def _one_ranking(ranked_ids: Sequence[Hashable], positives: Sequence[Hashable],
                 junk: Sequence[Hashable] | None, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ranking_statistics` of a single ranking of hashable ids (junk wins over positive)."""
    junk_set = set(junk or ())
    positive_set = set(positives) - junk_set
    ranked = list(ranked_ids)
    is_positive = np.array([r in positive_set for r in ranked], dtype=bool).reshape(1, len(ranked))
    is_junk = np.array([r in junk_set for r in ranked], dtype=bool).reshape(1, len(ranked))
    return ranking_statistics(is_positive, is_junk, np.array([len(positive_set)]), ks=ks)


def average_precision(ranked_ids: Sequence[Hashable], positives: Sequence[Hashable],
                      junk: Sequence[Hashable] | None = None) -> float:
    """AP of one ranking (revisited protocol: junk removed, trapezoid rule).

    ``ranked_ids`` are any hashable ids (row numbers, file names) best first; positives that are
    not ranked still count in the number of positives. Returns ``nan`` without positives.
    """
    ap, _ = _one_ranking(ranked_ids, positives, junk, ks=(1,))
    return float(ap[0])


def precision_at_k(ranked_ids: Sequence[Hashable], positives: Sequence[Hashable], k: int,
                   junk: Sequence[Hashable] | None = None) -> float:
    """The revisited protocol's precision at ``k`` of one ranking (see the module docstring)."""
    _, precision = _one_ranking(ranked_ids, positives, junk, ks=(k,))
    return float(precision[0, 0])


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvaluationResult:
    """The outcome of one evaluation setting.

    Attributes:
        map: mean AP over the queries that have positives (and were described).
        per_query_ap: ``(Q,)``, ``nan`` for queries left out.
        mp_at_k: mean precision at each k over the same queries.
        per_query_precision: k -> ``(Q,)`` precision at k.
        rankings: ``(Q, R)`` database row numbers, best first (``-1`` rows for queries that
            could not be described).
        query_names: a name (path) per query.
        setting: ``all`` (folder collection) or ``easy`` / ``medium`` / ``hard`` / ``classic``.
        per_class_ap: folder collections: the mean AP of the queries of each class.
        top_status: ``(Q, T)`` int8 status of the first ``T`` ranked images (``POSITIVE``,
            ``JUNK``, ``NEGATIVE``), for rankings files and reports.
        top_scores: ``(Q, T)`` similarities of the same images.
        n_left_out: queries left out of the means (no positives, or not described).
        n_positives: ``(Q,)`` the number of positives of each query (junk excluded).
    """

    map: float
    per_query_ap: np.ndarray
    mp_at_k: dict[int, float]
    per_query_precision: dict[int, np.ndarray]
    rankings: np.ndarray
    query_names: list[str]
    setting: str = "all"
    per_class_ap: dict[str, float] = dataclasses.field(default_factory=dict)
    top_status: np.ndarray | None = None
    top_scores: np.ndarray | None = None
    n_left_out: int = 0
    n_positives: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        """Queries that count in the means."""
        return int(np.isfinite(self.per_query_ap).sum())

    def summary(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no per-query arrays)."""
        out: dict[str, Any] = {
            "setting": self.setting, "map": _json_float(self.map), "n_queries": self.n_queries,
            "left_out": self.n_left_out,
            "mp_at_k": {str(k): _json_float(v) for k, v in self.mp_at_k.items()},
        }
        if self.per_class_ap:
            out["per_class_ap"] = {c: _json_float(v) for c, v in self.per_class_ap.items()}
        return out


def _json_float(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _result(rankings: np.ndarray, is_positive: np.ndarray, is_junk: np.ndarray | None,
            n_positives: np.ndarray, ks: Sequence[int], query_names: list[str], setting: str,
            scores: np.ndarray | None, top: int) -> EvaluationResult:
    ap, precision = ranking_statistics(is_positive, is_junk, n_positives, ks)
    width = min(top, rankings.shape[1])
    status = np.where(is_positive[:, :width], POSITIVE, NEGATIVE).astype(np.int8)
    if is_junk is not None:
        status[is_junk[:, :width]] = JUNK
    per_query_precision = {int(k): precision[:, i] for i, k in enumerate(ks)}
    return EvaluationResult(
        map=_mean(ap), per_query_ap=ap,
        mp_at_k={k: _mean(v) for k, v in per_query_precision.items()},
        per_query_precision=per_query_precision, rankings=rankings, query_names=query_names,
        setting=setting, top_status=status,
        top_scores=None if scores is None else scores[:, :width],
        n_left_out=int((~np.isfinite(ap)).sum()),
        n_positives=np.asarray(n_positives, dtype=np.int64),
    )


def _top_scores(queries: np.ndarray, database: np.ndarray, rankings: np.ndarray, top: int) -> np.ndarray:
    """Similarities of the first ``top`` ranked images (``-inf`` where the id is -1)."""
    ids = rankings[:, :top]
    scores = np.empty(ids.shape, dtype=np.float32)
    step = max(1, _BLOCK_ENTRIES // max(1, ids.shape[1] * database.shape[1]))
    for start in range(0, ids.shape[0], step):
        rows = slice(start, start + step)
        gathered = database[np.maximum(ids[rows], 0)]             # (block, T, D)
        scores[rows] = np.einsum("qd,qtd->qt", queries[rows], gathered)
    return np.where(ids < 0, -np.inf, scores).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Folder-per-class collections
# --------------------------------------------------------------------------------------------
def folder_labels(paths: Sequence[str | PurePath]) -> list[str]:
    """The class of each image: the name of its parent folder (``""`` for a bare file name)."""
    return [PurePath(str(p).replace("\\", "/")).parent.name for p in paths]


def evaluate_folder_collection(descriptors: np.ndarray, labels: Sequence[Hashable], *,
                               ks: Sequence[int] = DEFAULT_KS, names: Sequence[str] | None = None,
                               top: int = RANKINGS_TOP, rerank: str | None = None) -> EvaluationResult:
    """Every image is a query once against all the others (SPEC section 5).

    The positives of image ``i`` are the other images with the same label; ``i`` itself is left
    out of its ranking, so rankings are ``(N, N - 1)``. Images alone in their class have no
    positives and are left out of the means. ``per_class_ap`` gives the mean AP per label.
    ``rerank``: a re-ranking chain such as ``dba+aqe`` (:mod:`retrievalkit.rerank`).
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape[0] != len(labels):
        raise RkitError(
            f"need one label per descriptor: {len(labels)} labels for descriptors of shape {descriptors.shape}"
        )
    if len(labels) < 2:
        raise RkitError(f"a folder collection needs at least 2 images to evaluate, got {len(labels)}")
    classes, codes = np.unique(np.asarray([str(label) for label in labels]), return_inverse=True)
    counts = np.bincount(codes)
    if counts.max() < 2:
        raise RkitError(
            "every image is alone in its class, so no query has a positive: put the images of "
            "one place in one folder (labels come from the parent folder name)"
        )
    rankings = rerank_rank(descriptors, descriptors, rerank, exclude_self=True)
    is_positive = codes[rankings] == codes[:, None]
    names = list(names) if names is not None else [str(i) for i in range(len(labels))]
    result = _result(rankings, is_positive, None, counts[codes] - 1, ks, names, "all",
                     _top_scores(descriptors, descriptors, rankings, top), top)
    result.per_class_ap = {
        str(c): _mean(result.per_query_ap[codes == i]) for i, c in enumerate(classes)
    }
    return result


# --------------------------------------------------------------------------------------------
# Revisited Oxford / Paris (and the classic protocol)
# --------------------------------------------------------------------------------------------
def evaluate_rankings(rankings: np.ndarray, positives: Sequence[Sequence[int]],
                      junk: Sequence[Sequence[int]] | None, n_database: int, *,
                      ks: Sequence[int] = DEFAULT_KS, query_names: Sequence[str] | None = None,
                      setting: str = "all", scores: np.ndarray | None = None,
                      top: int = RANKINGS_TOP, missing_queries: Sequence[int] = ()) -> EvaluationResult:
    """Evaluate given rankings against per-query positive and junk id lists.

    ``rankings`` hold database ids in ``[0, n_database)`` (``-1`` = nothing); a positive missing
    from a ranking (e.g. an image that failed to load) counts as never retrieved. Queries in
    ``missing_queries`` (not described) are left out of the means.
    """
    rankings = np.atleast_2d(np.asarray(rankings, dtype=np.int64))
    if len(positives) != rankings.shape[0] or (junk is not None and len(junk) != rankings.shape[0]):
        raise ValueError("need one positive (and junk) list per ranking row")
    is_positive = _membership(rankings, positives, n_database)
    is_junk = None if junk is None else _membership(rankings, junk, n_database)
    junk_sets = [set()] * len(positives) if junk is None else [set(np.asarray(j).tolist()) for j in junk]
    n_positives = np.array(
        [len(set(np.asarray(p).tolist()) - js) for p, js in zip(positives, junk_sets)], dtype=np.float64)
    if len(missing_queries):
        n_positives[np.asarray(missing_queries, dtype=np.int64)] = 0   # left out of the means
    names = list(query_names) if query_names is not None else [str(i) for i in range(rankings.shape[0])]
    return _result(rankings, is_positive, is_junk, n_positives, ks, names, setting, scores, top)


def evaluate_revisited(dataset: RevisitedDataset, queries: np.ndarray, database: np.ndarray, *,
                       query_ids: Sequence[int] | None = None, database_ids: Sequence[int] | None = None,
                       settings: Sequence[str] | None = None, ks: Sequence[int] = DEFAULT_KS,
                       top: int = RANKINGS_TOP, rerank: str | None = None) -> dict[str, EvaluationResult]:
    """Evaluate a revisited (or classic) Oxford/Paris-style dataset, one result per setting.

    Args:
        dataset: the ground truth (:func:`retrievalkit.datasets.load_revisited`).
        queries: descriptors of the (cropped) query images, in ``dataset.queries`` order, or of
            the subset ``query_ids`` when some could not be read.
        database: descriptors of the database images, in ``dataset.images`` order, or of the
            subset ``database_ids``.
        settings: which settings; default all the ground truth supports
            (:meth:`RevisitedDataset.settings`).
        rerank: a re-ranking chain such as ``dba+aqe`` (:mod:`retrievalkit.rerank`).
    """
    n_images, n_queries = len(dataset.images), len(dataset.queries)
    query_ids = np.arange(n_queries) if query_ids is None else np.asarray(query_ids, dtype=np.int64)
    database_ids = np.arange(n_images) if database_ids is None else np.asarray(database_ids, dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    if queries.shape[0] != len(query_ids) or database.shape[0] != len(database_ids):
        raise RkitError(
            f"{queries.shape[0]} query and {database.shape[0]} database descriptors do not match the "
            f"{len(query_ids)} queries and {len(database_ids)} images given: extract them from the "
            f"dataset's query and image lists"
        )
    local = rerank_rank(database, queries, rerank)                    # rows of `database`
    width = local.shape[1]
    rankings = np.full((n_queries, width), -1, dtype=np.int64)
    rankings[query_ids] = database_ids[local]
    scores = np.full((n_queries, min(top, width)), -np.inf, dtype=np.float32)
    scores[query_ids] = _top_scores(queries, database, local, top)
    missing = sorted(set(range(n_queries)) - set(query_ids.tolist()))
    results = {}
    for setting in settings or dataset.settings():
        positives, junk = dataset.setting(setting)
        results[setting] = evaluate_rankings(
            rankings, positives, junk, n_images, ks=ks, query_names=list(dataset.queries),
            setting=setting, scores=scores, top=top, missing_queries=missing)
    return results


# --------------------------------------------------------------------------------------------
# Rankings file (for `rkit report`)
# --------------------------------------------------------------------------------------------
def rankings_document(results: dict[str, EvaluationResult], query_paths: Sequence[str],
                      database_paths: Sequence[str], *, root: str | None = None,
                      query_root: str | None = None, protocol: str = "folder",
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document ``rkit eval --save-rankings`` writes (format in docs/evaluation.md)."""
    document: dict[str, Any] = {
        "format": "rkit-rankings", "version": 1, "protocol": protocol,
        "root": root, "query_root": query_root if query_root is not None else root,
        "primary": "medium" if "medium" in results else next(iter(results)),
        "meta": meta or {}, "settings": {},
    }
    for name, result in results.items():
        entries = []
        status = result.top_status if result.top_status is not None else np.zeros((0, 0), np.int8)
        for q, path in enumerate(query_paths):
            row = result.rankings[q, : status.shape[1]]
            top = []
            for i, db_id in enumerate(row.tolist()):
                if db_id < 0:
                    break
                item = {"path": database_paths[db_id], "status": STATUS_NAMES[int(status[q, i])]}
                if result.top_scores is not None:
                    item["score"] = round(float(result.top_scores[q, i]), 6)
                top.append(item)
            entries.append({
                "query": path, "ap": _json_float(result.per_query_ap[q]),
                "n_positives": None if result.n_positives is None else int(result.n_positives[q]),
                "precision": {str(k): _json_float(v[q]) for k, v in result.per_query_precision.items()},
                "top": top,
            })
        document["settings"][name] = {**result.summary(), "queries": entries}
    return document
