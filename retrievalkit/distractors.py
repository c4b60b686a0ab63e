"""Large-scale evaluation with distractors: the R1M protocol (Radenović et al., CVPR 2018, sec. 3).

``rkit eval --dataset roxford5k --distractors revisitop1m`` adds the 1M distractor images to the
database of ROxford5k / RParis6k. Distractors are never positive nor junk, so they can only push
the relevant images down the ranking; AP is computed exactly as without them (docs/definitions.md §5) on
a database of ``images + distractors``.

* **Images.** ``DATA_ROOT/<name>/<name>.txt`` lists the images (paths relative to
  ``DATA_ROOT/<name>/jpg``), as ``rkit data download revisitop1m`` lays them out.
* **Descriptors, once per model.** They are extracted with the same model, image size, scales
  and whitening as the dataset, and cached in ``DATA_ROOT/<name>/descriptors/<key>.npz``;
  ``key`` hashes those settings (and the size/mtime of a model file), so another model gets its
  own file and the same model reuses it (random weights, ``--weights none``, are never cached).
  Extraction of a million images takes long: it resumes
  from ``<key>.partial.npz`` after an interruption.
* **Search.** The combined database goes into a faiss index built by
  :func:`retrievalkit.index.build_index` with the options of ``rkit search`` (``--distractor-index
  flat`` exact, or e.g. ``ivfpq:nlist=8192:pq_m=64:nprobe=64`` for 1M x 2048-D). Each query's
  ranking is cut at ``top`` (default 10,000): a positive ranked lower counts as not retrieved,
  which changes AP by less than 1/``top`` per such positive.
* **Re-ranking** (``--rerank dba+aqe``, :mod:`retrievalkit.rerank`) works on the combined
  database: DBA replaces images and distractors alike, their neighbours found through an index
  of the ``--distractor-index`` kind, and alpha-QE expands the queries in the augmented one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import RevisitedDataset
from .descriptors import DescriptorSet
from .errors import RkitError
from .evaluate import DEFAULT_KS, EvaluationResult, evaluate_rankings

DEFAULT_TOP = 10_000
IMAGE_FOLDER = "jpg"

#: ``extract(paths, root, checkpoint) -> DescriptorSet``: describe images like the dataset was
Extractor = Callable[[list[str], Path, Path], DescriptorSet]


def parse_index_spec(text: str) -> tuple[str, dict[str, int]]:
    """``flat`` | ``ivf[:nlist=N][:nprobe=P]`` | ``ivfpq[:nlist=N][:pq_m=M][:nbits=B][:nprobe=P]``."""
    kind, *pairs = [part.strip() for part in str(text).split(":")]
    options: dict[str, int] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in ("nlist", "nprobe", "pq_m", "nbits") or not value.isdigit():
            raise RkitError(f"--distractor-index {text!r}: write KIND[:nlist=N][:pq_m=M][:nbits=B][:nprobe=P], "
                            f"e.g. flat or ivfpq:nlist=8192:pq_m=64:nprobe=64")
        options[key] = int(value)
    return kind, options


def distractor_images(data_root: str | Path, name: str) -> tuple[Path, list[str]]:
    """``(image folder, paths)`` of a distractor set laid out by ``rkit data download``."""
    folder = Path(data_root) / name
    listing = folder / f"{name}.txt"
    if not listing.is_file():
        raise RkitError(f"distractor list {listing} not found: run `rkit data download {name} --root {data_root}` "
                        f"(or give the right --data-root)")
    paths = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not paths:
        raise RkitError(f"{listing} names no images: download {name} again")
    return folder / IMAGE_FOLDER, paths


def _stamp(path: Path | None) -> Any:
    """What identifies a model or whitening file's content cheaply: size and mtime."""
    if path is None:
        return None
    target = Path(path)
    files = [target / "weights.pt"] if target.is_dir() else [target]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()] or str(path)


def cache_key(settings: dict[str, Any]) -> str:
    """A short hash of the model settings the distractor descriptors depend on."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_settings(backbone: str, pooling: str, weights: str, model: Path | None, whiten: Path | None,
                   image_size: int, scales: Sequence[float]) -> dict[str, Any]:
    """The settings :func:`cache_key` hashes (``--model``/``--whitening`` files by size and mtime)."""
    return {"backbone": None if model else backbone, "pooling": None if model else pooling,
            "weights": None if model else weights, "model": _stamp(model), "whiten": _stamp(whiten),
            "image_size": int(image_size), "scales": [float(s) for s in scales],
            # multi-scale descriptors of whitening networks are combined as the authors' code does
            # since December 2026; descriptors cached before then are described again
            **({"scale_combination": 2} if len(scales) > 1 else {})}


def distractor_descriptors(data_root: str | Path, name: str, settings: dict[str, Any],
                           extract: Extractor, log: Callable[[str], None] = print) -> DescriptorSet:
    """The cached descriptors of distractor set ``name`` for a model, extracted first if needed."""
    from .extract import partial_path

    image_dir, paths = distractor_images(data_root, name)
    cache = Path(data_root) / name / "descriptors" / f"{cache_key(settings)}.npz"
    if settings.get("weights") == "none" and settings.get("model") is None:
        log(f"{name}: random weights (--weights none) differ on every run: describing the distractors uncached")
        return extract(paths, image_dir, cache.with_name(f"{cache.stem}.random.partial.npz"))
    if cache.is_file():
        cached = DescriptorSet.load(cache)
        if len(cached) and cached.meta.get("distractor_settings") == json.loads(json.dumps(settings, default=str)):
            log(f"{name}: {len(cached)} distractor descriptors from the cache {cache}")
            return cached
    log(f"{name}: describing {len(paths)} distractor images once for this model (cache: {cache})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    described = extract(paths, image_dir, partial_path(cache))
    meta = {**described.meta, "distractors": name, "distractor_settings": settings}
    result = DescriptorSet(described.descriptors, described.paths, json.loads(json.dumps(meta, default=str)))
    result.save(cache)
    return result


def rank_with_distractors(queries: np.ndarray, database: np.ndarray, distractors: np.ndarray, *,
                          index: str = "flat", top: int = DEFAULT_TOP, rerank: str | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top`` rows of ``[database; distractors]`` for each query, through a faiss index.

    ``rerank`` (e.g. ``dba+aqe``) runs its steps on the combined database, their neighbours
    searched through an index of the same kind; the augmented database gets its own index.
    """
    from .index import build_index
    from .rerank import Neighbours, as_chain

    if distractors.shape[1] != database.shape[1]:
        raise RkitError(f"the distractor descriptors have {distractors.shape[1]} dimensions, the dataset's "
                        f"{database.shape[1]}: describe both with the same model and whitening")
    kind, options = parse_index_spec(index)
    nprobe = options.pop("nprobe", None)

    def indexed(matrix: np.ndarray) -> Neighbours:
        return Neighbours(matrix, build_index(matrix, kind, nprobe=nprobe, **options))

    combined = np.concatenate([database, distractors]).astype(np.float32)
    chain = as_chain(rerank)
    if chain is not None:
        combined = chain.transform_database(combined, indexed, searched_by=index)
    neighbours = indexed(combined)
    if chain is not None:
        queries = chain.transform_queries(queries, neighbours)
    scores, ids = neighbours(np.asarray(queries, np.float32), min(int(top), len(combined)))
    return ids, scores


def evaluate_with_distractors(dataset: RevisitedDataset, queries: np.ndarray, database: np.ndarray,
                              distractors: np.ndarray, *, query_ids: Sequence[int], database_ids: Sequence[int],
                              ks: Sequence[int] = DEFAULT_KS, index: str = "flat",
                              top: int = DEFAULT_TOP, rerank: str | None = None) -> dict[str, EvaluationResult]:
    """Like :func:`retrievalkit.evaluate.evaluate_revisited`, on ``images + distractors``.

    Database ids ``0 .. len(dataset.images)-1`` are the dataset's images, the distractors follow.
    """
    n_images, n_queries = len(dataset.images), len(dataset.queries)
    query_ids = np.asarray(query_ids, dtype=np.int64)
    database_ids = np.asarray(database_ids, dtype=np.int64)
    rows, scores = rank_with_distractors(np.asarray(queries, np.float32), np.asarray(database, np.float32),
                                         np.asarray(distractors, np.float32), index=index, top=top,
                                         rerank=rerank)
    row_to_id = np.concatenate([database_ids, n_images + np.arange(len(distractors), dtype=np.int64)])
    rankings = np.full((n_queries, rows.shape[1]), -1, dtype=np.int64)
    rankings[query_ids] = np.where(rows >= 0, row_to_id[np.maximum(rows, 0)], -1)
    all_scores = np.full((n_queries, rows.shape[1]), -np.inf, dtype=np.float32)
    all_scores[query_ids] = scores
    missing = sorted(set(range(n_queries)) - set(query_ids.tolist()))
    results = {}
    for setting in dataset.settings():
        positives, junk = dataset.setting(setting)
        results[setting] = evaluate_rankings(rankings, positives, junk, n_images + len(distractors), ks=ks,
                                             query_names=list(dataset.queries), setting=setting,
                                             scores=all_scores, missing_queries=missing)
    return results


def evaluate_distractor_set(dataset: RevisitedDataset, queries: np.ndarray, database: np.ndarray,
                            distractors: DescriptorSet, query_ids: Sequence[int], database_ids: Sequence[int], *,
                            ks: Sequence[int] = DEFAULT_KS, index: str = "flat", rerank: str | None = None
                            ) -> tuple[dict[str, EvaluationResult], dict[str, Any]]:
    """:func:`evaluate_with_distractors` for a descriptors set; also returns ``{"count", "paths"}``,
    the distractor paths relative to the dataset's image folder (for the rankings file)."""
    import os

    from .descriptors import check_finite

    check_finite(distractors.descriptors, "the distractor descriptors", paths=distractors.paths)
    results = evaluate_with_distractors(dataset, queries, database, distractors.descriptors, query_ids=query_ids,
                                        database_ids=database_ids, ks=ks, index=index, rerank=rerank)
    root = distractors.meta.get("root")
    paths = [os.path.relpath(Path(root) / p, dataset.image_dir) if root and dataset.root is not None else p
             for p in distractors.paths]
    return results, {"count": len(distractors), "paths": [Path(p).as_posix() for p in paths]}
