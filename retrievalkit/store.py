"""Descriptors beyond RAM: read a descriptors file or a sharded store without loading it.

Two layouts hold the same thing (row ``i``'s descriptor and image path):

* a **descriptors file** ``NAME.npz`` (:mod:`retrievalkit.descriptors`). ``numpy.savez`` stores
  its arrays uncompressed, so :class:`NpzSource` memory-maps ``descriptors`` and ``paths``
  straight from the archive: nothing is read until a row is used;
* a **descriptor store**, a folder written by :class:`ShardWriter` (``rkit extract --format
  shards``)::

      STORE/store.json          format, version, dim, dtype, shard list with row counts, meta
      STORE/shard-00000.npy     (n_0, D) float32 or float16 rows
      STORE/shard-00000.paths   the n_0 image paths, one per line (UTF-8)
      STORE/shard-00001.npy ...

  Every file is written atomically and ``store.json`` last: it is the commit point, so a shard
  left by an interrupted append is not part of the store (and is overwritten by the next one).
  A store is appendable: new images become new shards.

Both are read through one interface, :class:`DescriptorSource` (:func:`open_descriptors`):
``count``, ``dim``, ``meta``, :meth:`~DescriptorSource.blocks` (stream float32 rows),
:meth:`~DescriptorSource.rows` (gather rows, e.g. a re-ranking shortlist), :meth:`~DescriptorSource.paths_at`
(paths of some rows only: searching never builds N Python strings; streamed and whole matrices
are checked for NaN/inf like :meth:`DescriptorSet.load`) and
:meth:`~DescriptorSource.fingerprint`, which identifies the content so a saved index can refuse
descriptors it was not built from.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, read_json_manifest, write_text_atomic
from .errors import RkitError

STORE_FORMAT = "rkit-descriptor-store"
STORE_VERSION = 1
STORE_MANIFEST = "store.json"
STORE_DTYPES = ("float32", "float16")
#: Rows hashed by :meth:`DescriptorSource.fingerprint`: all up to this many, else an even sample.
FINGERPRINT_ROWS = 4096


class DescriptorSource:
    """Rows of descriptors and their paths, read on demand (see the module docstring)."""

    count: int
    dim: int
    meta: dict[str, Any]
    location: Path

    def _slice(self, start: int, stop: int) -> np.ndarray:   # rows [start, stop) as stored
        raise NotImplementedError

    def paths_at(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The image paths of rows ``ids`` (only those are decoded)."""
        raise NotImplementedError

    def blocks(self, block_rows: int = 65536, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over rows ``[start, stop)``, ``block_rows`` at a time."""
        from .descriptors import check_finite

        stop = self.count if stop is None else min(stop, self.count)
        for first in range(start, stop, block_rows):
            block = np.ascontiguousarray(self._slice(first, min(stop, first + block_rows)), dtype=np.float32)
            yield first, check_finite(block, f"{self.location} (rows from {first})")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Float32 rows ``ids`` (any shape of int ids >= 0) -> ``ids.shape + (D,)``."""
        ids = np.asarray(ids, dtype=np.int64)
        gathered = self._gather(ids.ravel())
        return np.asarray(gathered, dtype=np.float32).reshape(ids.shape + (self.dim,))

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        return np.take(self._slice(0, self.count), ids, axis=0)   # take: much faster than [ids] on a memmap

    def matrix(self) -> np.ndarray:
        """All rows as one float32 matrix (memory-mapped where the layout allows), checked finite."""
        from .descriptors import check_finite

        whole = self._slice(0, self.count)
        return check_finite(whole if whole.dtype == np.float32 else whole.astype(np.float32), str(self.location))

    def all_paths(self) -> list[str]:
        return self.paths_at(np.arange(self.count))

    def fingerprint(self, count: int | None = None) -> str:
        """A hash of the first ``count`` rows (default all): size, dim, sampled rows and paths.

        Up to :data:`FINGERPRINT_ROWS` rows every row is hashed; beyond, an even sample of that
        many rows (first and last included) with their paths, so a different or re-extracted
        database is recognised in milliseconds without reading all of it.
        """
        n = self.count if count is None else int(count)
        ids = np.arange(n) if n <= FINGERPRINT_ROWS else np.unique(np.linspace(0, n - 1, FINGERPRINT_ROWS).astype(np.int64))
        digest = hashlib.blake2b(f"{n},{self.dim}".encode(), digest_size=16)
        if n:
            digest.update(self.rows(ids).tobytes())
            digest.update("\n".join(self.paths_at(ids)).encode("utf-8"))
        return digest.hexdigest()


class ArraySource(DescriptorSource):
    """An in-memory matrix (e.g. re-ranked descriptors) with the paths of another source."""

    def __init__(self, descriptors: np.ndarray, like: DescriptorSource) -> None:
        self._descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if self._descriptors.shape[0] != like.count:
            raise ValueError("an ArraySource needs one row per row of the source it stands for")
        self.like, self.location, self.meta = like, like.location, like.meta
        self.count, self.dim = self._descriptors.shape

    def _slice(self, start: int, stop: int) -> np.ndarray:
        return self._descriptors[start:stop]

    def paths_at(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return self.like.paths_at(ids)


# -- memory maps: gathered rows are read at random, streamed blocks with read-ahead --------------
def _random_access(array: np.ndarray) -> np.ndarray:
    """Advise the kernel that a memory-mapped array is read at random: no read-around on a miss.

    Each file is mapped twice: this map serves :meth:`DescriptorSource.rows` (re-ranking
    shortlists, fingerprints), a map with the default advice serves streamed blocks. Opening an
    index over a 10M x 128-D store that was not in the page cache read all 5 GB for the 4,096
    fingerprint rows through a default map, 192 MB through this one; streaming the store through
    a random-access map took 5x longer than through a default one (docs/search.md).
    """
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array


# -- a descriptors file (.npz), memory-mapped -----------------------------------------------------
def _npz_member_map(path: Path, member: str) -> np.ndarray | None:
    """Memory-map an uncompressed ``member.npy`` of an ``.npz``; None when it is compressed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{member}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fh)
        offset = fh.tell()
    if fortran or dtype.hasobject:
        return None
    if not int(np.prod(shape)):
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class NpzSource(DescriptorSource):
    """A descriptors file (``rkit extract``'s ``.npz``) read by memory-mapping its arrays."""

    def __init__(self, path: str | Path) -> None:
        from .descriptors import DescriptorSet

        self.location = Path(path)
        try:
            descriptors = _npz_member_map(self.location, "descriptors")
            paths = _npz_member_map(self.location, "paths")
            with np.load(self.location, allow_pickle=False) as data:
                self.meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            descriptors = paths = None
        if descriptors is None or paths is None:       # compressed or damaged: the checked reader
            loaded = DescriptorSet.load(self.location)
            descriptors, paths, self.meta = loaded.descriptors, np.asarray(loaded.paths, dtype=str), loaded.meta
        if descriptors.ndim != 2 or paths.shape != (descriptors.shape[0],):
            raise RkitError(f"{self.location} is not a descriptors file written by `rkit extract` "
                            f"(descriptors {descriptors.shape}, paths {paths.shape})")
        self._descriptors, self._paths = descriptors, paths
        self._random: np.ndarray | None = None          # a second map, for rows(): see _random_access
        self.count, self.dim = int(descriptors.shape[0]), int(descriptors.shape[1])

    def _slice(self, start: int, stop: int) -> np.ndarray:
        return self._descriptors[start:stop]

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        if self._random is None:
            mapped = _npz_member_map(self.location, "descriptors") if isinstance(self._descriptors, np.memmap) else None
            self._random = self._descriptors if mapped is None else _random_access(mapped)
        return np.take(self._random, ids, axis=0)

    def paths_at(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [str(p) for p in self._paths[np.asarray(ids, dtype=np.int64)]]


# -- a sharded store -----------------------------------------------------------------------------
def _shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def _read_manifest(folder: Path) -> dict[str, Any]:
    return read_json_manifest(folder / STORE_MANIFEST, fmt=STORE_FORMAT, version=STORE_VERSION,
                              what="a descriptor store",
                              missing=f"write one with `rkit extract SOURCE --format shards --out {folder}`",
                              remedy="re-extract the store")


class ShardStore(DescriptorSource):
    """A descriptor store folder; each shard's ``.npy`` is memory-mapped when first used."""

    def __init__(self, folder: str | Path) -> None:
        self.location = Path(folder)
        manifest = _read_manifest(self.location)
        self.meta = manifest.get("meta", {})
        self.dim = int(manifest["dim"])
        self.dtype = np.dtype(manifest["dtype"])
        self.shards = [(s["name"], int(s["count"])) for s in manifest["shards"]]
        self.starts = np.concatenate([[0], np.cumsum([c for _, c in self.shards])]).astype(np.int64)
        self.count = int(self.starts[-1])
        self._maps: dict[int, np.ndarray] = {}             # read at random (rows)
        self._stream_maps: dict[int, np.ndarray] = {}      # read in order (blocks)
        self._paths: dict[int, _PathLines] = {}

    def _shard(self, number: int, streamed: bool = False) -> np.ndarray:
        """Shard ``number`` memory-mapped for gathered rows, or (``streamed``) for blocks."""
        maps = self._stream_maps if streamed else self._maps
        if number not in maps:
            name, count = self.shards[number]
            file = self.location / f"{name}.npy"
            try:
                array = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise RkitError(f"shard {file} of the store cannot be read ({exc}): re-extract the store") from exc
            if array.shape != (count, self.dim):
                raise RkitError(f"shard {file} holds {array.shape} but the manifest says ({count}, {self.dim}): "
                                f"the store is damaged; re-extract it")
            maps[number] = array if streamed else _random_access(array)
        return maps[number]

    def _shard_paths(self, number: int) -> _PathLines:
        if number not in self._paths:
            name, count = self.shards[number]
            self._paths[number] = _PathLines(self.location / f"{name}.paths", count)
        return self._paths[number]

    def _slice(self, start: int, stop: int) -> np.ndarray:
        first, last = np.searchsorted(self.starts, [start, max(start, stop - 1)], side="right") - 1
        parts = [self._shard(s, streamed=True)[max(0, start - self.starts[s]): stop - self.starts[s]]
                 for s in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        if len(self.shards) == 1:
            return np.take(self._shard(0), ids, axis=0)
        shard_of = np.searchsorted(self.starts, ids, side="right") - 1
        order = np.argsort(shard_of, kind="stable")               # the ids of each shard, as one run
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.shards) + 1))
        out = np.empty((ids.size, self.dim), dtype=self.dtype)
        for s in np.flatnonzero(np.diff(bounds)).tolist():
            run = order[bounds[s]:bounds[s + 1]]
            out[run] = np.take(self._shard(s), ids[run] - self.starts[s], axis=0)
        return out

    def paths_at(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64)
        shard_of = np.searchsorted(self.starts, ids, side="right") - 1
        return [self._shard_paths(s).line(i - int(self.starts[s])) for i, s in zip(ids.tolist(), shard_of.tolist())]

    def all_paths(self) -> list[str]:
        return [path for number in range(len(self.shards)) for path in self._shard_paths(number).all()]


class _PathLines:
    """The lines of a shard's ``.paths`` file, memory-mapped and indexed by their offsets only.

    A few paths of a 10M-row store (a fingerprint, the rows of a result list) then cost the
    offsets, 4 bytes per row, instead of 10M Python strings (864 MB and 1 s).
    """

    def __init__(self, file: Path, count: int) -> None:
        self.file, self.count = file, count
        try:
            self.data = np.memmap(file, dtype=np.uint8, mode="r") if file.stat().st_size else np.zeros(0, np.uint8)
        except OSError as exc:
            raise RkitError(f"paths file {file} of the store cannot be read ({exc}): re-extract the store") from exc
        ends = np.flatnonzero(self.data == ord("\n"))
        self.starts = np.concatenate([[0], ends + 1]).astype(np.uint32 if len(self.data) < 2 ** 32 else np.int64)
        if len(self.starts) < count + (len(ends) == count):   # count lines, the last one may lack its "\n"
            raise RkitError(f"paths file {file} holds fewer than the {count} lines the store manifest says: "
                            f"the store is damaged; re-extract it")

    def line(self, row: int) -> str:
        start = int(self.starts[row])
        stop = int(self.starts[row + 1]) - 1 if row + 1 < len(self.starts) else len(self.data)
        return self.data[start:stop].tobytes().decode("utf-8")

    def all(self) -> list[str]:
        return self.data.tobytes().decode("utf-8").split("\n")[:self.count]


class ShardWriter:
    """Create or append to a descriptor store; each :meth:`append` commits one shard."""

    def __init__(self, folder: str | Path, *, dim: int | None = None, dtype: str = "float32",
                 meta: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        if (self.folder / STORE_MANIFEST).is_file():
            self.manifest = _read_manifest(self.folder)
            if dim is not None and dim != self.manifest["dim"]:
                raise RkitError(f"cannot append {dim}-D descriptors to the {self.manifest['dim']}-D store "
                                f"{self.folder}: use the same model and whitening, or a new --out folder")
        else:
            if dtype not in STORE_DTYPES:
                raise RkitError(f"a store holds float32 or float16 rows, not {dtype!r}")
            if self.folder.exists() and any(self.folder.iterdir()):
                raise RkitError(f"{self.folder} exists and is not a descriptor store: choose a new folder")
            self.manifest = {"format": STORE_FORMAT, "version": STORE_VERSION, "dim": dim,
                             "dtype": dtype, "shards": [], "meta": meta or {}}
        if meta and not self.manifest.get("meta"):
            self.manifest["meta"] = meta

    @property
    def count(self) -> int:
        return sum(int(s["count"]) for s in self.manifest["shards"])

    def append(self, descriptors: np.ndarray, paths: Sequence[str]) -> Path:
        """Write ``descriptors`` (N, D) and ``paths`` as a new shard, then commit the manifest."""
        array = np.asarray(descriptors)
        if array.ndim != 2 or array.shape[0] != len(paths):
            raise RkitError(f"need one (N, D) row per path: {array.shape} for {len(paths)} paths")
        if any("\n" in p for p in paths):
            raise RkitError("an image path contains a line break; a store keeps one path per line")
        if self.manifest["dim"] is None:
            self.manifest["dim"] = int(array.shape[1])
        if array.shape[1] != self.manifest["dim"]:
            raise RkitError(f"cannot append {array.shape[1]}-D rows to the {self.manifest['dim']}-D store {self.folder}")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = _shard_name(len(self.manifest["shards"]))
        with atomic_path(self.folder / f"{name}.npy") as tmp:
            np.save(tmp, np.ascontiguousarray(array, dtype=self.manifest["dtype"]))
        write_text_atomic(self.folder / f"{name}.paths", "\n".join(paths))
        self.manifest["shards"].append({"name": name, "count": int(array.shape[0])})
        write_text_atomic(self.folder / STORE_MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        return self.folder / f"{name}.npy"


def write_store(folder: str | Path, descriptors: np.ndarray, paths: Sequence[str], meta: dict[str, Any],
                dtype: str = "float32") -> int:
    """Append descriptors to the store ``folder`` (created if new) as one shard; returns its row count."""
    writer = ShardWriter(folder, dim=int(np.asarray(descriptors).shape[1]), dtype=dtype, meta=meta)
    writer.append(descriptors, paths)
    return writer.count


def open_descriptors(path: str | Path) -> DescriptorSource:
    """A descriptors file (``.npz``) or a store folder, opened without reading its rows."""
    path = Path(path)
    if path.is_dir():
        return ShardStore(path)
    if not path.is_file():
        raise RkitError(f"descriptors {path} do not exist: write them with `rkit extract` "
                        f"(a .npz file, or a folder with --format shards)")
    return NpzSource(path)


def load_descriptor_set(path: str | Path):
    """Any descriptors (file or store) as an in-memory :class:`~retrievalkit.descriptors.DescriptorSet`."""
    from .descriptors import DescriptorSet

    path = Path(path)
    if not path.is_dir():
        return DescriptorSet.load(path)
    source = ShardStore(path)
    return DescriptorSet(np.array(source.matrix(), dtype=np.float32), source.all_paths(), dict(source.meta))
