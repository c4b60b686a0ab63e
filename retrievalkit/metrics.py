"""The retrieval metrics: average precision and mP@k of rankings (docs/definitions.md, "Evaluation").

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

AP and P@k lie in [0, 1] by construction *if* a ranking holds no more positives than the query
has. A ranking that does (the query itself left in its own ranking, a positive listed twice) is
a bug upstream; :func:`ranking_statistics` refuses it instead of printing an AP above 1, and
checks the bounds of what it returns.

Everything is vectorised over a ``(queries, ranking length)`` boolean matrix: there is no Python
loop over database images.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .errors import RkitError

#: The cut-offs of mP@k reported by default.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


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
    _check_counts(found, n_positives)
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
    _check_bounds(ap, precision)
    return ap, precision


class MetricError(RuntimeError):
    """A metric outside [0, 1]: the rankings or positive counts given were inconsistent (a bug)."""


def _check_counts(found: np.ndarray, n_positives: np.ndarray) -> None:
    """Each ranking may hold at most its query's number of positives (else AP could exceed 1).

    Queries with no positives (``n_positives <= 0``) are left out of every mean, so not checked.
    """
    over = np.flatnonzero((found > n_positives) & (n_positives > 0))
    if over.size:
        q = int(over[0])
        raise MetricError(
            f"{over.size} ranking(s) hold more positives than their query has (row {q} of the block: "
            f"{int(found[q])} ranked, {n_positives[q]:g} in the ground truth); a query ranked against "
            f"itself or a repeated database id would give AP > 1")


def _check_bounds(ap: np.ndarray, precision: np.ndarray) -> None:
    """AP and P@k never leave [0, 1] (``nan`` = no positives)."""
    for name, values in (("AP", ap), ("P@k", precision)):
        finite = values[np.isfinite(values)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0 + 1e-9):
            raise MetricError(f"{name} outside [0, 1] ({finite.min():g} .. {finite.max():g}): inconsistent rankings")


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
