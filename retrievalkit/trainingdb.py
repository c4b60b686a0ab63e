"""The training database: images grouped into 3D models, with what SfM saw of each image.

docs/definitions.md §4. For each image i of a model (cluster): P(i), the ids of the 3D points it
observes, their depths in i, its camera centre and focal length. From these the pair quantities
the miners need are computed here, and only here:

* ``shared_points(q, i)`` = |P(q) n P(i)|
* ``overlap(q, i)``       = |P(q) n P(i)| / |P(q)|
* ``scale_change(q, i)``  = max(s_q / s_i, s_i / s_q) with s_j = focal_j / median depth in j of
  the co-observed points (the apparent size of the shared structure; 1 = same scale)
* ``co_observing(q)``     = M(q): the other images of q's model that share points with q

A database imported from a retrieval-SfM ``db.pkl`` has clusters but no 3D points:
``has_points`` is then False and miners that need points say so.

The per-pair quantities of every pair of images inside a model that share points can be
precomputed once (:meth:`TrainingDatabase.compute_pair_statistics`, done by ``rkit sfm``) and
are then read from that cache instead of being recomputed; the formulas stay here either way.

Persistence: :meth:`TrainingDatabase.save` writes a directory readable with numpy and json
only (format described in ``docs/sfm.md``, version :data:`FORMAT_VERSION`);
:func:`load_database` reads it. Building from a reconstruction lives in
:mod:`retrievalkit.sfm`, importing a retrieval-SfM ``db.pkl`` in :mod:`retrievalkit.dbpkl`.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import RkitError

#: Version of the on-disk format written by :meth:`TrainingDatabase.save`.
FORMAT_VERSION = 1
#: File names inside a saved database directory.
JSON_NAME = "trainingdb.json"
ARRAYS_NAME = "trainingdb.npz"


@dataclasses.dataclass
class PairStatistics:
    """Cached pair quantities for the pairs ``(a, b)``, ``a < b``, of a model that share points.

    ``overlap_ab`` = |P(a) n P(b)| / |P(a)|, ``overlap_ba`` = |P(a) n P(b)| / |P(b)|;
    ``scale`` is symmetric. Pairs absent from the cache share no point.
    """

    pairs: np.ndarray
    shared: np.ndarray
    overlap_ab: np.ndarray
    overlap_ba: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.shared = np.asarray(self.shared, dtype=np.int64)
        self.overlap_ab = np.asarray(self.overlap_ab, dtype=np.float64)
        self.overlap_ba = np.asarray(self.overlap_ba, dtype=np.float64)
        self.scale = np.asarray(self.scale, dtype=np.float64)
        self._index: dict[tuple[int, int], int] | None = None

    def __len__(self) -> int:
        return int(len(self.pairs))

    def find(self, q: int, i: int) -> int | None:
        """Row of the pair {q, i}, or None when the two images share no point."""
        if self._index is None:
            self._index = {(int(a), int(b)): k for k, (a, b) in enumerate(self.pairs)}
        return self._index.get((q, i) if q < i else (i, q))

    def subset(self, keep: np.ndarray, n_images: int) -> PairStatistics:
        """The pairs among the images ``keep`` (of ``n_images``), renumbered ``0..len(keep)-1``
        in the order of ``keep``; ``a < b`` is restored where the renumbering swaps a pair."""
        new_index = np.full(n_images, -1, dtype=np.int64)
        new_index[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
        a, b = new_index[self.pairs[:, 0]], new_index[self.pairs[:, 1]]
        inside = (a >= 0) & (b >= 0)
        a, b = a[inside], b[inside]
        swap = a > b
        ov_ab = np.where(swap, self.overlap_ba[inside], self.overlap_ab[inside])
        ov_ba = np.where(swap, self.overlap_ab[inside], self.overlap_ba[inside])
        pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        return PairStatistics(pairs[order], self.shared[inside][order], ov_ab[order], ov_ba[order],
                              self.scale[inside][order])


def partner_lists(pairs: np.ndarray, n_images: int) -> list[np.ndarray]:
    """For every image, the sorted images it is paired with in ``pairs`` ``(P, 2)``."""
    out: list[list[int]] = [[] for _ in range(n_images)]
    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        out[int(a)].append(int(b))
        out[int(b)].append(int(a))
    return [np.asarray(sorted(p), dtype=np.int64) for p in out]


@dataclasses.dataclass
class TrainingDatabase:
    """Registered images, their 3D model (cluster) and, if known, their 3D points."""

    images: list[str]
    clusters: np.ndarray
    point_ids: list[np.ndarray] | None = None
    point_depths: list[np.ndarray] | None = None
    centres: np.ndarray | None = None
    focals: np.ndarray | None = None
    root: Path | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Known (query, positive) image index pairs, e.g. the qidxs/pidxs of an imported db.pkl.
    positive_pairs: np.ndarray | None = None
    #: Precomputed pair quantities (see :meth:`compute_pair_statistics`), or None.
    pair_cache: PairStatistics | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        self.clusters = np.asarray(self.clusters, dtype=np.int64)
        if self.clusters.shape != (n,):
            raise ValueError(f"clusters must have one entry per image ({n}), got {self.clusters.shape}")
        if self.point_ids is not None:
            if len(self.point_ids) != n:
                raise ValueError("point_ids must have one array per image")
            if self.point_depths is not None and len(self.point_depths) != n:
                raise ValueError("point_depths must have one array per image")
            ids: list[np.ndarray] = []
            depths: list[np.ndarray] = []
            for i, raw in enumerate(self.point_ids):
                raw = np.asarray(raw, dtype=np.int64).reshape(-1)
                unique, first = np.unique(raw, return_index=True)
                ids.append(unique)
                if self.point_depths is None:
                    continue
                d = np.asarray(self.point_depths[i], dtype=np.float64).reshape(-1)
                if len(d) == len(raw):
                    d = d[first]  # the depths follow the ids as given: keep them with their ids
                elif len(d) != len(unique):
                    raise ValueError(f"image {i}: {len(raw)} point ids but {len(d)} depths "
                                     "(give one depth per point id)")
                depths.append(d)
            self.point_ids = ids
            if self.point_depths is not None:
                self.point_depths = depths
        if self.positive_pairs is not None:
            self.positive_pairs = np.asarray(self.positive_pairs, dtype=np.int64).reshape(-1, 2)
        if self.root is not None:
            self.root = Path(self.root)
        self._members: dict[int, np.ndarray] = {}
        self._partners: list[np.ndarray] | None = None

    # -- basic facts ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_points(self) -> bool:
        """Whether 3D point observations are known (False for an imported db.pkl)."""
        return self.point_ids is not None

    @property
    def num_clusters(self) -> int:
        return int(len(np.unique(self.clusters)))

    def image_path(self, index: int) -> Path:
        path = Path(self.images[index])
        return path if self.root is None or path.is_absolute() else self.root / path

    def cluster_members(self, cluster: int) -> np.ndarray:
        """Indices of the images of a 3D model."""
        if cluster not in self._members:
            self._members[cluster] = np.flatnonzero(self.clusters == cluster)
        return self._members[cluster]

    def require_points(self, who: str) -> None:
        """Raise a clear error if this database has no 3D points (``who`` needs them)."""
        if not self.has_points:
            raise RkitError(
                f"{who} needs the 3D points each image observes, but this training database has "
                f"none (it was imported from a db.pkl). Use a database built by `rkit sfm`, or a "
                f"miner that needs no points (m1, random)."
            )

    # -- pair quantities (docs/definitions.md §4) ------------------------------------------------
    def shared_point_ids(self, q: int, i: int) -> np.ndarray:
        """The ids of the 3D points both q and i observe (sorted)."""
        self.require_points("shared points")
        assert self.point_ids is not None
        return np.intersect1d(self.point_ids[q], self.point_ids[i], assume_unique=True)

    def shared_points(self, q: int, i: int) -> int:
        """|P(q) n P(i)|."""
        self.require_points("shared points")
        if self.pair_cache is not None:
            row = self.pair_cache.find(q, i)
            return 0 if row is None else int(self.pair_cache.shared[row])
        return int(len(self.shared_point_ids(q, i)))

    def overlap(self, q: int, i: int) -> float:
        """|P(q) n P(i)| / |P(q)| (0 when q observes no points)."""
        self.require_points("overlap")
        assert self.point_ids is not None
        if self.pair_cache is not None:
            row = self.pair_cache.find(q, i)
            if row is None:
                return 0.0
            return float(self.pair_cache.overlap_ab[row] if q < i else self.pair_cache.overlap_ba[row])
        total = len(self.point_ids[q])
        return self.shared_points(q, i) / total if total else 0.0

    def _apparent_size(self, j: int, shared: np.ndarray) -> float:
        assert self.point_ids is not None and self.point_depths is not None and self.focals is not None
        where = np.searchsorted(self.point_ids[j], shared)
        depth = float(np.median(self.point_depths[j][where]))
        return float(self.focals[j]) / depth

    def _scale_from_shared(self, q: int, i: int, shared: np.ndarray) -> float:
        """The scale-change formula, given the shared point ids (the only copy of it)."""
        if self.point_depths is None or self.focals is None or len(shared) == 0:
            return float("inf")
        s_q, s_i = self._apparent_size(q, shared), self._apparent_size(i, shared)
        return max(s_q / s_i, s_i / s_q)

    def scale_change(self, q: int, i: int) -> float:
        """max(s_q / s_i, s_i / s_q), s_j = focal_j / median depth of the shared points in j.

        ``inf`` when the images share no point or depths/focals are unknown.
        """
        if self.point_depths is None or self.focals is None:
            return float("inf")
        if self.pair_cache is not None:
            row = self.pair_cache.find(q, i)
            return float("inf") if row is None else float(self.pair_cache.scale[row])
        return self._scale_from_shared(q, i, self.shared_point_ids(q, i))

    def co_observing(self, q: int) -> np.ndarray:
        """M(q): the other images of q's model sharing at least one 3D point with q.

        Without 3D points (imported db.pkl), all other images of q's model.
        """
        if not self.has_points:
            members = self.cluster_members(int(self.clusters[q]))
            return members[members != q]
        if self._partners is None:
            # every image's partners at once: from the cache, else from the sparse incidence
            # product (never a point intersection per pair)
            pairs = self.pair_cache.pairs if self.pair_cache is not None else self.co_observing_pairs()
            self._partners = partner_lists(pairs, len(self))
        partners = self._partners[q]
        return partners[self.clusters[partners] == self.clusters[q]]

    # -- pair statistics cache -----------------------------------------------------------
    def co_observing_pairs(self) -> np.ndarray:
        """Every pair ``(a, b)``, ``a < b``, of images of one model sharing at least one point,
        sorted, ``(P, 2)``: from a sparse image x point incidence product, so only pairs that
        share points are visited."""
        from scipy import sparse

        self.require_points("co-observing pairs")
        assert self.point_ids is not None
        rows = np.repeat(np.arange(len(self)), [len(p) for p in self.point_ids])
        cols_raw = np.concatenate(self.point_ids) if len(self) else np.zeros(0, np.int64)
        _, cols = np.unique(cols_raw, return_inverse=True)
        incidence = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, cols.ravel())),
                                      shape=(len(self), int(cols.max()) + 1 if len(cols) else 0))
        counts = sparse.triu(incidence @ incidence.T, k=1).tocoo()
        same_model = self.clusters[counts.row] == self.clusters[counts.col]
        order = np.lexsort((counts.col[same_model], counts.row[same_model]))
        return np.stack([counts.row[same_model][order], counts.col[same_model][order]], axis=1).astype(np.int64)

    def compute_pair_statistics(self, progress: bool = False) -> PairStatistics:
        """Compute shared points, overlap (both ways) and scale change of every pair of images
        of the same model that share at least one point (:meth:`co_observing_pairs`), with the
        formulas above. Returns the cache; :meth:`use_pair_statistics` installs it.
        """
        self.require_points("pair statistics")
        assert self.point_ids is not None
        pairs = self.co_observing_pairs()
        pair_a, pair_b = pairs[:, 0], pairs[:, 1]
        shared_n = np.zeros(len(pair_a), np.int64)
        ov_ab = np.zeros(len(pair_a))
        ov_ba = np.zeros(len(pair_a))
        scale = np.zeros(len(pair_a))
        iterator: Any = range(len(pair_a))
        if progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, desc="pair statistics", unit="pair")
        for k in iterator:
            a, b = int(pair_a[k]), int(pair_b[k])
            shared = self.shared_point_ids(a, b)
            shared_n[k] = len(shared)
            ov_ab[k] = len(shared) / len(self.point_ids[a])
            ov_ba[k] = len(shared) / len(self.point_ids[b])
            scale[k] = self._scale_from_shared(a, b, shared)
        return PairStatistics(pairs, shared_n, ov_ab, ov_ba, scale)

    def use_pair_statistics(self, cache: PairStatistics | None = None) -> PairStatistics:
        """Install ``cache`` (computed now if not given) as the source of the pair quantities."""
        self.pair_cache = None
        self._partners = None
        self.pair_cache = cache if cache is not None else self.compute_pair_statistics()
        return self.pair_cache

    # -- summary ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts for ``rkit sfm --stats``: images, models and their sizes, points, pairs."""
        sizes = {int(c): int(n) for c, n in zip(*np.unique(self.clusters, return_counts=True))}
        out: dict[str, Any] = {
            "images": len(self),
            "models": self.num_clusters,
            "model_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
            "has_points": self.has_points,
            "source": self.meta.get("source", "unknown"),
        }
        if self.has_points:
            assert self.point_ids is not None
            per_image = np.asarray([len(p) for p in self.point_ids])
            out["points"] = int(len(np.unique(np.concatenate(self.point_ids)))) if len(self) else 0
            out["points_per_image_median"] = float(np.median(per_image)) if len(self) else 0.0
            if self.pair_cache is not None:
                cache = self.pair_cache
                out["co_observing_pairs"] = len(cache)
                if len(cache):
                    out["overlap_median"] = float(np.median(np.r_[cache.overlap_ab, cache.overlap_ba]))
                    out["scale_change_median"] = float(np.median(cache.scale))
        if self.positive_pairs is not None:
            out["positive_pairs"] = int(len(self.positive_pairs))
        unregistered = self.meta.get("unregistered")
        if unregistered is not None:
            out["unregistered_images"] = len(unregistered)
        return out

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the database to ``directory`` (``trainingdb.json`` + ``trainingdb.npz``).

        The arrays are written first and the JSON last, each atomically, so a directory with
        a JSON file always holds a complete database. Format: ``docs/sfm.md``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"clusters": self.clusters}
        if self.point_ids is not None:
            arrays["point_offsets"] = np.cumsum([0] + [len(p) for p in self.point_ids]).astype(np.int64)
            arrays["point_ids"] = (np.concatenate(self.point_ids).astype(np.int64) if len(self)
                                   else np.zeros(0, np.int64))
            if self.point_depths is not None:
                arrays["point_depths"] = (np.concatenate(self.point_depths).astype(np.float32)
                                          if len(self) else np.zeros(0, np.float32))
        if self.centres is not None:
            arrays["centres"] = np.asarray(self.centres, dtype=np.float64)
        if self.focals is not None:
            arrays["focals"] = np.asarray(self.focals, dtype=np.float64)
        if self.positive_pairs is not None:
            arrays["positive_pairs"] = self.positive_pairs
        if self.pair_cache is not None:
            cache = self.pair_cache
            arrays.update(pair_index=cache.pairs, pair_shared=cache.shared,
                          pair_overlap_ab=cache.overlap_ab, pair_overlap_ba=cache.overlap_ba,
                          pair_scale=cache.scale)
        with atomic_path(directory / ARRAYS_NAME, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        header = {
            "format": "retrievalkit-trainingdb",
            "format_version": FORMAT_VERSION,
            "root": None if self.root is None else str(self.root),
            "images": list(self.images),
            "arrays": sorted(arrays),
            "meta": self.meta,
        }
        write_text_atomic(directory / JSON_NAME, json.dumps(header, indent=1, default=_json_default) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> TrainingDatabase:
        """Same as :func:`load_database`."""
        return load_database(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the database meta")


def load_database(path: str | Path) -> TrainingDatabase:
    """Read a training database saved by :meth:`TrainingDatabase.save` (``rkit sfm`` output).

    ``path`` is the database directory, the ``rkit sfm`` output directory (its ``database``
    sub-folder is used) or the ``trainingdb.json`` file itself. Needs numpy and json only.
    """
    path = Path(path)
    candidates = [path] if path.is_file() else [path / JSON_NAME, path / "database" / JSON_NAME]
    header_path = next((c for c in candidates if c.is_file()), None)
    if header_path is None:
        raise RkitError(
            f"{path} is not a training database: no {JSON_NAME} there. Give the output folder "
            f"of `rkit sfm` (or its database/ sub-folder); build one with `rkit sfm IMAGES --out DIR`."
        )
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RkitError(f"{header_path} is damaged ({exc}); rebuild the database with `rkit sfm`.") from exc
    if header.get("format") != "retrievalkit-trainingdb":
        raise RkitError(f"{header_path} is not a retrievalkit training database; rebuild it with `rkit sfm`.")
    version = int(header.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise RkitError(
            f"{header_path} has format version {version}, newer than this retrievalkit reads "
            f"({FORMAT_VERSION}); upgrade retrievalkit."
        )
    arrays_path = header_path.parent / ARRAYS_NAME
    if not arrays_path.is_file():
        raise RkitError(f"{arrays_path} is missing; rebuild the database with `rkit sfm`.")
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        point_ids = point_depths = None
        if "point_ids" in arrays:
            offsets = arrays["point_offsets"]
            point_ids = [arrays["point_ids"][offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
            if "point_depths" in arrays:
                point_depths = [arrays["point_depths"][offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
        cache = None
        if "pair_index" in arrays:
            cache = PairStatistics(arrays["pair_index"], arrays["pair_shared"], arrays["pair_overlap_ab"],
                                   arrays["pair_overlap_ba"], arrays["pair_scale"])
        root = header.get("root")
        return TrainingDatabase(
            images=list(header["images"]), clusters=arrays["clusters"], point_ids=point_ids,
            point_depths=point_depths, centres=arrays.get("centres"), focals=arrays.get("focals"),
            root=None if root is None else Path(root), meta=dict(header.get("meta", {})),
            positive_pairs=arrays.get("positive_pairs"), pair_cache=cache,
        )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise RkitError(f"{header_path.parent} holds a damaged training database ({type(exc).__name__}: "
                        f"{exc}); rebuild it with `rkit sfm`.") from exc
