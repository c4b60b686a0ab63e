"""Retrieval evaluation: the two protocols (folder collections, revisited Oxford/Paris) and their API.

The protocols are defined in docs/definitions.md ("Evaluation") and described for users in
docs/evaluation.md; the formulas (AP, mP@k) live in :mod:`retrievalkit.metrics`. Two layers:

* on arrays: :func:`evaluate_folder_collection`, :func:`evaluate_revisited`,
  :func:`evaluate_rankings` -> :class:`EvaluationResult` per setting;
* on descriptors files (what ``rkit eval`` does): :func:`evaluate_descriptors` (a folder
  collection) and :func:`evaluate_dataset` (a revisited dataset) -> an :class:`Evaluation` that
  prints its table, gives the JSON report and writes the rankings file for ``rkit report``.

Rankings come from :func:`retrievalkit.index.rank_all_scored` (the one neighbour search),
through :func:`retrievalkit.rerank.rank` when a re-ranking chain (``aqe``, ``dba``) is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .datasets import folder_labels  # noqa: F401 (re-exported: labels are read in datasets.py)
from .descriptors import check_finite
from .errors import RkitError
from .metrics import (DEFAULT_KS, _membership, average_precision, precision_at_k,  # noqa: F401 (re-exported)
                      ranking_statistics)
from .rerank import rank as rerank_rank

if TYPE_CHECKING:
    from .datasets import RevisitedDataset
    from .descriptors import DescriptorSet

#: How many ranked images per query a rankings file keeps.
RANKINGS_TOP = 100

#: status codes of ranked images (``EvaluationResult.top_status``)
NEGATIVE, POSITIVE, JUNK = 0, 1, 2
STATUS_NAMES = {NEGATIVE: "negative", POSITIVE: "positive", JUNK: "junk"}


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


# --------------------------------------------------------------------------------------------
# Folder-per-class collections
# --------------------------------------------------------------------------------------------
def evaluate_folder_collection(descriptors: np.ndarray, labels: Sequence[Hashable], *,
                               ks: Sequence[int] = DEFAULT_KS, names: Sequence[str] | None = None,
                               top: int = RANKINGS_TOP, rerank: str | None = None) -> EvaluationResult:
    """Every image is a query once against all the others (docs/definitions.md §5).

    The positives of image ``i`` are the other images with the same label; ``i`` itself is left
    out of its ranking, so rankings are ``(N, N - 1)``. Images alone in their class have no
    positives and are left out of the means. ``per_class_ap`` gives the mean AP per label.
    ``rerank``: a re-ranking chain such as ``dba+aqe`` (:mod:`retrievalkit.rerank`).
    """
    descriptors = np.asarray(descriptors)
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
    rankings, scores = rerank_rank(descriptors, descriptors, rerank, exclude_self=True, top=top)
    is_positive = codes[rankings] == codes[:, None]
    names = list(names) if names is not None else [str(i) for i in range(len(labels))]
    result = _result(rankings, is_positive, None, counts[codes] - 1, ks, names, "all", scores, top)
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
    queries = np.asarray(queries)
    database = np.asarray(database)
    if queries.shape[0] != len(query_ids) or database.shape[0] != len(database_ids):
        raise RkitError(
            f"{queries.shape[0]} query and {database.shape[0]} database descriptors do not match the "
            f"{len(query_ids)} queries and {len(database_ids)} images given: extract them from the "
            f"dataset's query and image lists"
        )
    local, local_scores = rerank_rank(database, queries, rerank, top=top)   # rows of `database`
    width = local.shape[1]
    rankings = np.full((n_queries, width), -1, dtype=np.int64)
    rankings[query_ids] = database_ids[local]
    scores = np.full((n_queries, min(top, width)), -np.inf, dtype=np.float32)
    scores[query_ids] = local_scores
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


# --------------------------------------------------------------------------------------------
# The API on descriptors files: what `rkit eval` does, in two calls
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Evaluation:
    """One evaluation of descriptors: the results per setting and what was evaluated.

    Made by :func:`evaluate_descriptors` (folder collection) or :func:`evaluate_dataset`
    (revisited Oxford/Paris). :meth:`report` is the JSON ``rkit eval --json`` prints,
    :meth:`table` its text table, :meth:`rankings_document` the ``--save-rankings`` file.

    Attributes:
        protocol: ``folder``, ``revisited`` or ``classic``.
        results: setting (``all``; ``easy``/``medium``/``hard``; ``classic``) -> result.
        info: the facts reported with the numbers (source or dataset, counts, dimension).
        query_paths, database_paths: the images the rankings' rows and ids refer to.
        root: the folder those paths are relative to (``None``: as given).
        meta: recorded in the rankings file (source, descriptors meta, query crops).
        notes: warnings for the user (e.g. images without a descriptor), in plain sentences.
        seconds: time spent ranking and scoring.
    """

    protocol: str
    results: dict[str, EvaluationResult]
    info: dict[str, Any]
    query_paths: list[str]
    database_paths: list[str]
    root: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def primary(self) -> EvaluationResult:
        """The headline result: ``medium`` for revisited datasets, else the first setting."""
        return self.results["medium"] if "medium" in self.results else next(iter(self.results.values()))

    def report(self) -> dict[str, Any]:
        """The numbers and facts, JSON-ready (the document ``rkit eval --json`` prints)."""
        report = {"protocol": self.protocol, **self.info}
        if self.protocol == "folder":
            report.update(self.primary.summary())
            report["class_sizes"] = report.pop("class_sizes")       # after the numbers, as before
        else:
            report["settings"] = {name: result.summary() for name, result in self.results.items()}
        report["evaluation_seconds"] = round(self.seconds, 3)
        return report

    def table(self) -> str:
        """The human-readable table ``rkit eval`` prints."""
        lines = _folder_table(self) if self.protocol == "folder" else _settings_table(self)
        return "\n".join(lines) + "\n"

    def rankings_document(self) -> dict[str, Any]:
        """The rankings file (format in docs/evaluation.md) for ``rkit report``."""
        return rankings_document(self.results, self.query_paths, self.database_paths, root=self.root,
                                 protocol=self.protocol, meta=self.meta)

    def save_rankings(self, path: str | PathLike[str]) -> Path:
        """Write :meth:`rankings_document` as JSON to ``path`` atomically."""
        from .atomic import write_text_atomic

        path = Path(path)
        write_text_atomic(path, json.dumps(self.rankings_document()) + "\n")
        return path


def _fmt(value: float) -> str:
    return "  -   " if value is None or not np.isfinite(value) else f"{value:.4f}"


def _folder_table(evaluation: Evaluation) -> list[str]:
    info, result = evaluation.info, evaluation.primary
    left_out = f" ({result.n_left_out} alone in their class, left out)" if result.n_left_out else ""
    lines = [f"folder collection {info['source']}: {info['images']} images, {info['classes']} classes, "
             f"{info['dim']}-D; {result.n_queries} queries{left_out}",
             "  ".join([f"mAP {_fmt(result.map)}"] + [f"mP@{k} {_fmt(v)}" for k, v in result.mp_at_k.items()]),
             "per class (mean AP, images):"]
    width = max((len(c) for c in result.per_class_ap), default=5)
    order = sorted(result.per_class_ap.items(), key=lambda item: (np.nan_to_num(item[1], nan=2.0), item[0]))
    lines += [f"  {name or '(no folder)':<{width}}  {_fmt(ap)}  {info['class_sizes'][name]:>5}" for name, ap in order]
    return lines


def _settings_table(evaluation: Evaluation) -> list[str]:
    info = evaluation.info
    ks = list(evaluation.primary.mp_at_k)
    lines = [f"{info['dataset']}: {info['queries']} queries, {info['images']} images, {info['dim']}-D",
             f"{'setting':<9} {'mAP':>7}" + "".join(f" {'mP@' + str(k):>7}" for k in ks) + f" {'queries':>8}"]
    for setting, result in evaluation.results.items():
        lines.append(f"{setting:<9} {_fmt(result.map):>7}"
                     + "".join(f" {_fmt(result.mp_at_k[k]):>7}" for k in ks) + f" {result.n_queries:>8}")
    return lines


def _rerank_info(rerank: str | None) -> dict[str, str]:
    """``{"rerank": spec}`` for the report when a re-ranking chain is used."""
    from .rerank import as_chain

    chain = as_chain(rerank)
    return {"rerank": str(chain)} if chain is not None else {}


def evaluate_descriptors(descriptors: DescriptorSet, labels: Sequence[Hashable] | None = None, *,
                         ks: Sequence[int] = DEFAULT_KS, source: str | None = None,
                         top: int = RANKINGS_TOP, rerank: str | None = None) -> Evaluation:
    """Evaluate a folder collection: every image queries all the others (``rkit eval FILE``).

    Args:
        descriptors: the collection's descriptors (:meth:`DescriptorSet.load`, or
            :func:`retrievalkit.extract.extract_descriptors` wrapped in a :class:`DescriptorSet`).
        labels: the class of each image; default the parent folder of each path
            (:func:`retrievalkit.datasets.folder_labels`).
        ks: the cut-offs of mP@k.
        source: what to call the collection in the report (default: its meta's ``source``).
        rerank: a re-ranking chain such as ``dba+aqe`` (:mod:`retrievalkit.rerank`).
    """
    labels = list(folder_labels(descriptors.paths) if labels is None else labels)
    source = source if source is not None else str(descriptors.meta.get("source", ""))
    check_finite(descriptors.descriptors, source or "the descriptors", paths=descriptors.paths)
    started = time.perf_counter()
    result = evaluate_folder_collection(descriptors.descriptors, labels, ks=ks, names=descriptors.paths, top=top,
                                        rerank=rerank)
    seconds = time.perf_counter() - started
    sizes = Counter(str(label) for label in labels)
    info = {"source": source, "images": len(descriptors), "classes": len(sizes), "dim": descriptors.dim,
            "class_sizes": {c: sizes[c] for c in sorted(sizes)}, **_rerank_info(rerank)}
    return Evaluation("folder", {"all": result}, info, list(descriptors.paths), list(descriptors.paths),
                      root=descriptors.meta.get("root"), seconds=seconds,
                      meta={"source": source, "descriptors_meta": descriptors.meta})


def evaluate_dataset(dataset: RevisitedDataset, database: DescriptorSet, queries: DescriptorSet, *,
                     ks: Sequence[int] = DEFAULT_KS, settings: Sequence[str] | None = None,
                     top: int = RANKINGS_TOP, distractors: DescriptorSet | None = None,
                     distractor_index: str = "flat", rerank: str | None = None) -> Evaluation:
    """Evaluate a revisited (or classic) Oxford/Paris dataset (``rkit eval --dataset NAME``).

    Descriptors are matched to the dataset by file name (:meth:`RevisitedDataset.match`), in any
    order; database images without a descriptor count as never retrieved and queries without one
    are left out (both reported in :attr:`Evaluation.notes`).

    Args:
        dataset: the ground truth (:func:`retrievalkit.datasets.load_revisited`).
        database: descriptors of the dataset's images.
        queries: descriptors of its queries, cropped to their boxes.
        distractors: descriptors added to the database, never relevant (R1M protocol,
            :mod:`retrievalkit.distractors`), searched with a faiss ``distractor_index``.
        rerank: a re-ranking chain such as ``dba+aqe`` (:mod:`retrievalkit.rerank`).

    Raises:
        RkitError: no descriptor matches an image (or a query) of the dataset.
    """
    check_finite(database.descriptors, f"the {dataset.name} database descriptors", paths=database.paths)
    check_finite(queries.descriptors, f"the {dataset.name} query descriptors", paths=queries.paths)
    database_ids, database_rows = dataset.match(database.paths)
    if not len(database_ids):
        raise RkitError(f"none of the {len(database)} database descriptors is an image of {dataset.name}: "
                        f"extract the images of {dataset.image_dir}")
    query_ids, query_rows = dataset.match(queries.paths, queries=True)
    if not len(query_ids):
        raise RkitError(f"none of the {len(queries)} query descriptors is a query of {dataset.name}: "
                        f"extract the cropped queries (`rkit eval --dataset {dataset.name}` without "
                        f"--query-descriptors does it)")
    missing_db, missing_q = len(dataset.images) - len(database_ids), len(dataset.queries) - len(query_ids)
    notes = [f"{missing_db} of {len(dataset.images)} database images and {missing_q} of {len(dataset.queries)} "
             f"queries have no descriptor: missing images count as never retrieved, missing queries are "
             f"left out"] if missing_db or missing_q else []
    started = time.perf_counter()
    if distractors is None:
        results = evaluate_revisited(dataset, queries.descriptors[query_rows], database.descriptors[database_rows],
                                     query_ids=query_ids, database_ids=database_ids, settings=settings, ks=ks, top=top,
                                     rerank=rerank)
    else:   # the R1M protocol: retrievalkit/distractors.py
        from .distractors import evaluate_distractor_set

        results, extra = evaluate_distractor_set(dataset, queries.descriptors[query_rows],
                                                 database.descriptors[database_rows], distractors, query_ids,
                                                 database_ids, ks=ks, index=distractor_index, rerank=rerank)
    seconds = time.perf_counter() - started
    protocol = "revisited" if dataset.is_revisited else "classic"
    info = {"dataset": dataset.name, "images": len(dataset.images), "queries": len(dataset.queries),
            "dim": database.dim, "missing_images": missing_db, "missing_queries": missing_q, **_rerank_info(rerank)}
    meta = {"dataset": dataset.name, "query_crops": [list(b) if b else None for b in dataset.boxes],
            "descriptors_meta": database.meta}
    database_paths = dataset.image_paths()
    if distractors is not None:
        info["distractors"], database_paths = extra["count"], database_paths + extra["paths"]
    return Evaluation(protocol, results, info, dataset.query_paths(), database_paths,
                      root=str(dataset.image_dir), meta=meta, notes=notes, seconds=seconds)
