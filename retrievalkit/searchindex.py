"""A saved, sharded, re-ranking search index over a descriptors file or store.

:mod:`retrievalkit.index` builds single faiss indexes in memory; this module makes one *logical*
index of them that lives in a folder next to the descriptors it was built from::

    INDEX/index.json         kind and parameters, row count, dim, the descriptors' location and
                             fingerprint, and the shard list (file, first row, row count)
    INDEX/shard-00000.faiss  rows [0, n_0) as a faiss index, ids local to the shard
    INDEX/shard-00001.faiss  rows [n_0, n_0 + n_1) ...

* **Training on a sample.** IVF / PQ / OPQ quantisers are trained once, on ``train_size`` rows
  drawn evenly at random (:class:`IndexParams`), and shared by every shard; the rows are then
  added block by block, streamed from the descriptors (:mod:`retrievalkit.store`).
* **Exact re-ranking.** An ``ivfpq`` search fetches a shortlist of ``rerank_k`` candidates per
  query from the compressed codes and re-ranks it by the exact inner product with the float
  descriptors, read from their memory map (:func:`retrievalkit.index.rerank_exact`). The index
  files hold only codes; the float matrix stays in the descriptors file and only the
  shortlisted rows are read.
* **Shards** are searched one by one (or by separate processes, :func:`merge_partials`) and
  their top-k lists merged exactly (:func:`retrievalkit.index.merge_top_k`).
* **Appending.** :meth:`SearchIndex.add` indexes the rows the descriptors gained since the
  index was built as a new shard, without retraining or rewriting the others.
* **Database-side re-ranking.** Built with a chain such as ``dba`` (:mod:`retrievalkit.rerank`),
  the index covers the *augmented* database, which is saved inside it (``INDEX/augmented-database/``,
  a descriptor store) and records the chain and the plain descriptors it was derived from.
  Loading it asks for the same chain; it cannot grow (DBA of a new image changes its
  neighbours' vectors too): rebuild it.
* **Safety.** Loading checks the descriptors against the recorded row count, dimension and
  :meth:`~retrievalkit.store.DescriptorSource.fingerprint`; a mismatch is refused. Every file
  is written atomically, ``index.json`` last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .atomic import read_json_manifest, write_text_atomic
from .errors import RkitError
from .index import INDEX_KINDS, ivf_of, load_index, merge_top_k, rerank_exact, search, train_index
from .store import DescriptorSource, open_descriptors, write_store

INDEX_FORMAT = "rkit-index"
INDEX_VERSION = 1
MANIFEST = "index.json"
#: Shortlist length re-ranked exactly by default for ``ivfpq`` up to 1M vectors; beyond, it grows
#: as 0.4 sqrt(N) (:func:`default_rerank_k`). On clustered 128-D vectors with 16-byte codes
#: (bench/bench_search_scale.py) recall@10 at 1M was 0.98 with 400 at nlist 1,024 (100 gave 0.66)
#: and 1.00 with 400 at nlist 4,096 (200 gave 0.99). At 10M with the default nlist (12,649) it was
#: 0.92 with 400 and 0.99 with 1,000; at nlist 4,096, 0.81 / 0.94 / 0.98 with 200 / 500 / 1,000.
DEFAULT_RERANK_K = 400


def default_rerank_k(count: int) -> int:
    """The default ``ivfpq`` shortlist for ``count`` vectors: 400 up to 1M, then 0.4 sqrt(N) (1,265
    at 10M, 4,000 at 100M). With nlist about 4 sqrt(N) and 16 cells probed, the codes scanned
    grow as sqrt(N), and the shortlist stays a tenth of them."""
    return max(DEFAULT_RERANK_K, round(0.4 * float(count) ** 0.5))
#: Store folder, inside a saved index, of the database after database-side re-ranking (DBA).
AUGMENTED = "augmented-database"


@dataclasses.dataclass
class IndexParams:
    """How to build an index (see :func:`retrievalkit.index.train_index` for each field).

    ``rerank_k``: shortlist re-ranked exactly (``None``: :func:`default_rerank_k` for ``ivfpq``,
    none for exact ``flat`` / ``ivf`` distances; ``0``: never). ``train_size``: rows the
    quantisers are trained on (a random sample when the database is larger).
    """

    kind: str = "flat"
    nlist: int | None = None
    pq_m: int | None = None
    nbits: int = 8
    opq: bool = False
    nprobe: int | None = None
    rerank_k: int | None = None
    train_size: int = 200_000
    seed: int = 1234

    def shortlist(self, k: int, rerank_k: int | None = None, count: int = 0) -> int:
        """Candidates fetched per query for ``k`` results among ``count`` (0: no re-ranking)."""
        chosen = self.rerank_k if rerank_k is None else rerank_k
        if chosen is None:
            chosen = default_rerank_k(count) if self.kind == "ivfpq" else 0
        return max(int(chosen), k) if chosen else 0


def _shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    if shards < 1:
        raise RkitError(f"--shards must be at least 1, got {shards}")
    step = -(-count // shards) if count else 1
    return [(a, min(count, a + step)) for a in range(0, count, step)] or [(0, 0)]


def _training_rows(source: DescriptorSource, params: IndexParams) -> np.ndarray:
    if params.kind == "flat":
        return np.zeros((1, source.dim), dtype=np.float32)
    if source.count <= params.train_size:
        return source.rows(np.arange(source.count))
    rng = np.random.default_rng(params.seed)
    return source.rows(np.sort(rng.choice(source.count, params.train_size, replace=False)))


def _fill(index: faiss.Index, source: DescriptorSource, start: int, stop: int, progress: bool) -> faiss.Index:
    from tqdm.auto import tqdm

    with tqdm(total=stop - start, desc="adding to the index", unit="vec", unit_scale=True,
              disable=not progress or stop - start <= 65536) as bar:    # one block: no bar
        for _, block in source.blocks(start=start, stop=stop):
            index.add(block)
            bar.update(len(block))
    return index


def _empty_like(index: faiss.Index) -> faiss.Index:
    copy = faiss.clone_index(index)
    copy.reset()
    return copy


class SearchIndex:
    """One logical index: shards of faiss indexes plus the descriptors they were built from."""

    def __init__(self, manifest: dict[str, Any], shards: list[faiss.Index | None],
                 source: DescriptorSource, folder: Path | None = None) -> None:
        self.manifest, self.shards, self.source, self.folder = manifest, shards, source, folder
        self.params = IndexParams(**manifest["params"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, source: DescriptorSource | str | Path, params: IndexParams | None = None, *,
              shards: int = 1, progress: bool = False, rerank: Any = None,
              cache_rerank: bool = True) -> SearchIndex:
        """Train on a sample of ``source``, then add every row, split into ``shards`` shards.

        ``rerank``: a chain (or spec) whose database-side steps (``dba``) are applied first; the
        index then covers the augmented database (see the module docstring), which is also kept
        in the re-ranking caches unless ``cache_rerank`` is False (an index about to be saved
        keeps it itself).
        """
        from .rerank import as_chain

        source = open_descriptors(source) if isinstance(source, (str, Path)) else source
        params = params or IndexParams()
        chain = as_chain(rerank)
        if chain is not None and chain.on_database:
            return cls._build_augmented(source, params, chain, shards, progress, cache_rerank)
        if params.kind not in INDEX_KINDS:
            raise RkitError(f"unknown index kind {params.kind!r}: choose one of {', '.join(INDEX_KINDS)}")
        if source.count == 0:
            raise RkitError(f"{source.location} holds no descriptors: there is nothing to index")
        started = time.perf_counter()
        trained = train_index(_training_rows(source, params), params.kind, nlist=params.nlist,
                              pq_m=params.pq_m, nbits=params.nbits, opq=params.opq,
                              nprobe=params.nprobe, seed=params.seed, n_database=source.count)
        train_s = time.perf_counter() - started
        ranges = _shard_ranges(source.count, shards)
        built = [_fill(_empty_like(trained), source, a, b, progress) for a, b in ranges]
        ivf = ivf_of(trained)
        resolved = dataclasses.replace(params, nlist=None if ivf is None else int(ivf.nlist),
                                       nprobe=None if ivf is None else int(ivf.nprobe),
                                       pq_m=int(ivf.pq.M) if params.kind == "ivfpq" else None)
        manifest = {
            "format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": params.kind,
            "faiss": type(trained).__name__, "params": dataclasses.asdict(resolved),
            "count": source.count, "dim": source.dim,
            "descriptors": {"location": str(Path(source.location).resolve()), "count": source.count,
                            "fingerprint": source.fingerprint()},
            "shards": [{"file": f"shard-{i:05d}.faiss", "start": a, "count": b - a} for i, (a, b) in enumerate(ranges)],
            "seconds": {"train": round(train_s, 3), "add": round(time.perf_counter() - started - train_s, 3)},
        }
        return cls(manifest, built, source)

    @classmethod
    def _build_augmented(cls, source: DescriptorSource, params: IndexParams, chain: Any, shards: int,
                         progress: bool, cache_rerank: bool) -> SearchIndex:
        """The index of ``source`` after ``chain``'s database steps, their neighbours found by
        an index of the same parameters (exact for ``flat``)."""
        from .rerank import IndexNeighbours
        from .store import ArraySource

        def neighbours(matrix: np.ndarray) -> IndexNeighbours:
            return IndexNeighbours(cls.build(ArraySource(matrix, source), params))

        searched_by = "exact" if params.kind == "flat" else json.dumps(dataclasses.asdict(params), sort_keys=True)
        augmented = ArraySource(chain.transform_database(source.matrix(), neighbours, searched_by,
                                                         remember=cache_rerank), source)
        index = cls.build(augmented, params, shards=shards, progress=progress)
        index.manifest["database_rerank"] = chain.database_spec
        index.manifest["descriptors"].update(
            location=AUGMENTED, inside=True,
            derived_from={"location": str(Path(source.location).resolve()), "count": source.count,
                          "fingerprint": source.fingerprint()})
        return index

    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` atomically (a complete new folder replaces the old one)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for entry, index in zip(self.manifest["shards"], self._all_shards()):
                faiss.write_index(index, str(tmp / entry["file"]))
            if self.manifest["descriptors"].get("inside"):
                write_store(tmp / AUGMENTED, self.source.matrix(), self.source.all_paths(),
                            meta={**self.source.meta, "rerank": self.manifest["database_rerank"]})
            (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=1) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o777 & ~_umask())
            old = None
            if folder.exists() or folder.is_symlink():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        self.folder = folder
        return folder

    def _all_shards(self) -> list[faiss.Index]:
        return [self._shard(i) for i in range(len(self.shards))]

    def _shard(self, number: int) -> faiss.Index:
        if self.shards[number] is None:
            assert self.folder is not None
            file = self.folder / self.manifest["shards"][number]["file"]
            self.shards[number] = load_index(file, expected_size=self.manifest["shards"][number]["count"],
                                             expected_dim=self.dim)
        return self.shards[number]

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, descriptors: DescriptorSource | str | Path | None = None, *,
             database_rerank: str | None = None) -> SearchIndex:
        """Open a saved index; its descriptors (default: the recorded location) must match it.

        ``database_rerank``: the database-side chain the caller searches with (``""``: none);
        an index built with another is refused. ``None``: not checked.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        built_with = manifest.get("database_rerank", "")
        if database_rerank is not None and database_rerank != built_with:
            how = f"search it with --rerank {built_with} (or {built_with}+aqe)" if built_with else \
                "search it without a database-side re-ranker (aqe alone works)"
            raise RkitError(f"index {folder} covers the database {f'after {built_with}' if built_with else 'as extracted'}"
                            f", but the search asks for {database_rerank or 'no database-side re-ranking'}: {how}, or "
                            f"build another index with `rkit index build DESCRIPTORS --rerank "
                            f"{database_rerank or 'none'} --out NEW_INDEX`")
        given = open_descriptors(descriptors) if isinstance(descriptors, (str, Path)) else descriptors
        recorded = manifest["descriptors"]
        if recorded.get("inside"):     # the augmented database is inside; the given one is what it came from
            if given is not None:
                derived = recorded["derived_from"]
                check_descriptors(folder, {**manifest, "count": derived["count"], "descriptors": derived}, given,
                                  prefix=False)
            given = open_descriptors(folder / recorded["location"])
        source = given if given is not None else open_descriptors(recorded["location"])
        check_descriptors(folder, manifest, source, prefix=False)
        return cls(manifest, [None] * len(manifest["shards"]), source, folder)

    # -- appending --------------------------------------------------------------------------
    def add(self, progress: bool = False) -> int:
        """Index the rows the descriptors gained since this index was built, as a new shard."""
        if self.folder is None:
            raise RkitError("save the index before adding to it")
        check_growable(self.folder, self.manifest)
        source = self.source
        check_descriptors(self.folder, self.manifest, source, prefix=True)
        start, stop = self.count, source.count
        if stop == start:
            return 0
        index = _fill(_empty_like(self._shard(0)), source, start, stop, progress)
        entry = {"file": f"shard-{len(self.shards):05d}.faiss", "start": start, "count": stop - start}
        tmp = self.folder / f".{entry['file']}.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, self.folder / entry["file"])
        self.shards.append(index)
        self.manifest["shards"].append(entry)
        self.manifest["count"] = stop
        self.manifest["descriptors"].update(count=stop, fingerprint=source.fingerprint())
        write_text_atomic(self.folder / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        return stop - start

    # -- searching --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None, rerank_k: int | None = None,
               shard_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(scores, global row ids)`` over the shards ``shard_ids`` (default all).

        With a shortlist (:meth:`IndexParams.shortlist`) each shard's candidates are re-ranked
        exactly before the merge, so scores are exact inner products.
        """
        shortlist = self.params.shortlist(k, rerank_k, self.count)
        chosen = range(len(self.shards)) if shard_ids is None else shard_ids
        parts = []
        for number in chosen:
            if not 0 <= number < len(self.shards):
                raise RkitError(f"shard {number} does not exist: the index has shards 0..{len(self.shards) - 1}")
            entry = self.manifest["shards"][number]
            if entry["count"] == 0:
                continue
            scores, ids = search(self._shard(number), queries, shortlist or k, nprobe=nprobe)
            ids = np.where(ids < 0, -1, ids + entry["start"])
            if shortlist:
                scores, ids = rerank_exact(queries, ids, self.source.rows, k)
            parts.append((scores, ids))
        if not parts:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return merge_top_k(parts, k)

    def describe(self) -> str:
        p = self.params
        extra = f" nlist={p.nlist} nprobe={p.nprobe}" if p.kind != "flat" else ""
        extra += f" pq_m={p.pq_m}{' +OPQ' if p.opq else ''}" if p.kind == "ivfpq" else ""
        extra += f" after {self.manifest['database_rerank']}" if self.manifest.get("database_rerank") else ""
        return f"{p.kind} index of {self.count} {self.dim}-D vectors in {len(self.shards)} shard(s){extra}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``index.json`` of a saved index, checked for format and version."""
    old = " (a single faiss file from an older --save-index: rebuild it)" if folder.is_file() else ""
    return read_json_manifest(folder / MANIFEST, fmt=INDEX_FORMAT, version=INDEX_VERSION, what="a saved index",
                              missing=f"build one with `rkit index build DESCRIPTORS --out {folder}` or "
                                      f"`rkit search DESCRIPTORS --save-index {folder}`{old}",
                              remedy="rebuild the index")


def check_growable(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse to add rows to an index of a database augmented by re-ranking (e.g. ``dba``)."""
    if manifest["descriptors"].get("inside"):
        raise RkitError(f"index {folder} covers the database after {manifest.get('database_rerank')}, which changes "
                        f"old images' vectors when new ones come: it cannot grow; build it again over the grown "
                        f"descriptors (`rkit index build DESCRIPTORS --rerank {manifest.get('database_rerank')} "
                        f"--out {folder}`)")


def check_descriptors(folder: Path, manifest: dict[str, Any], source: DescriptorSource, *, prefix: bool) -> None:
    """Refuse descriptors that are not the ones the index was built from (or, ``prefix``, grew from)."""
    count, dim = int(manifest["count"]), int(manifest["dim"])
    rebuild = f"rebuild it with `rkit index build {source.location} --out {folder}`"
    if source.dim != dim:
        raise RkitError(f"index {folder} has dimension {dim} but the descriptors {source.location} have "
                        f"{source.dim}: {rebuild}")
    if (source.count < count) if prefix else (source.count != count):
        raise RkitError(f"index {folder} holds {count} vectors but the descriptors file has {source.count} "
                        f"({source.location}): it was built from another database; {rebuild}"
                        + ("" if prefix else ", or add new rows with `rkit index add`"))
    if source.fingerprint(count) != manifest["descriptors"]["fingerprint"]:
        raise RkitError(f"index {folder} was built from other descriptors than {source.location} (same size, "
                        f"different content: fingerprint mismatch): {rebuild}")


def save_partial(path: str | Path, scores: np.ndarray, ids: np.ndarray, queries: Sequence[str],
                 index: SearchIndex, shard_ids: Sequence[int] | None) -> Path:
    """One process's top-k over some shards, to be merged by :func:`merge_partials`."""
    from .npzfile import save_npz

    meta = {"kind": "rkit-partial-results", "index_fingerprint": index.manifest["descriptors"]["fingerprint"],
            "index_count": index.count, "shards": list(shard_ids) if shard_ids is not None else None,
            "descriptors": str(Path(index.source.location).resolve())}
    return save_npz(path, meta, 1, scores=scores, ids=ids, queries=np.asarray(list(queries), dtype=str))


def merge_partials(paths: Sequence[str | Path], k: int) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """Merge partial results of the same queries on the same index into the exact top ``k``."""
    from .npzfile import load_npz

    parts, first_meta, names = [], None, None
    for path in paths:
        arrays, meta = load_npz(path, ("scores", "ids", "queries"), what="partial results file",
                                made_by="rkit search --load-index INDEX --shards ... --format npz", format_version=1)
        query_names = [str(q) for q in arrays["queries"]]
        if first_meta is None:
            first_meta, names = meta, query_names
        elif meta.get("index_fingerprint") != first_meta.get("index_fingerprint") or query_names != names:
            raise RkitError(f"{path} holds results of other queries or another index than {paths[0]}: merge only "
                            f"the parts of one search")
        parts.append((arrays["scores"], arrays["ids"]))
    if not parts:
        raise RkitError("no partial results given")
    scores, ids = merge_top_k(parts, k)
    return scores, ids, names or [], first_meta or {}
