"""The training database: images grouped into 3D models, with what SfM saw of each image.

SPEC section 4. For each image i of a model (cluster): P(i), the ids of the 3D points it
observes, their depths in i, its camera centre and focal length. From these the pair quantities
the miners need are computed here, and only here:

* ``shared_points(q, i)`` = |P(q) n P(i)|
* ``overlap(q, i)``       = |P(q) n P(i)| / |P(q)|
* ``scale_change(q, i)``  = max(s_q / s_i, s_i / s_q) with s_j = focal_j / median depth in j of
  the co-observed points (the apparent size of the shared structure; 1 = same scale)
* ``co_observing(q)``     = M(q): the other images of q's model that share points with q

A database imported from a retrieval-SfM ``db.pkl`` has clusters but no 3D points:
``has_points`` is then False and miners that need points say so.

Persistence (``save``/``load``) and building from a reconstruction live in
:mod:`retrievalkit.sfm`; this module is the in-memory reader API.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RkitError


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

    def __post_init__(self) -> None:
        n = len(self.images)
        self.clusters = np.asarray(self.clusters, dtype=np.int64)
        if self.clusters.shape != (n,):
            raise ValueError(f"clusters must have one entry per image ({n}), got {self.clusters.shape}")
        if self.point_ids is not None:
            if len(self.point_ids) != n:
                raise ValueError("point_ids must have one array per image")
            self.point_ids = [np.unique(np.asarray(p, dtype=np.int64)) if len(p) else np.zeros(0, np.int64)
                              for p in self.point_ids]
        if self.point_depths is not None and self.point_ids is not None:
            self.point_depths = [np.asarray(d, dtype=np.float64) for d in self.point_depths]
            for i, (p, d) in enumerate(zip(self.point_ids, self.point_depths)):
                if len(p) != len(d):
                    raise ValueError(f"image {i}: {len(p)} point ids but {len(d)} depths "
                                     "(give depths in the order of the sorted, unique point ids)")
        self._members: dict[int, np.ndarray] = {}

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

    # -- pair quantities (SPEC section 4) ------------------------------------------------
    def shared_point_ids(self, q: int, i: int) -> np.ndarray:
        self.require_points("shared points")
        assert self.point_ids is not None
        return np.intersect1d(self.point_ids[q], self.point_ids[i], assume_unique=True)

    def shared_points(self, q: int, i: int) -> int:
        """|P(q) n P(i)|."""
        return int(len(self.shared_point_ids(q, i)))

    def overlap(self, q: int, i: int) -> float:
        """|P(q) n P(i)| / |P(q)| (0 when q observes no points)."""
        assert self.point_ids is not None
        total = len(self.point_ids[q]) if self.has_points else 0
        return self.shared_points(q, i) / total if total else 0.0

    def _apparent_size(self, j: int, shared: np.ndarray) -> float:
        assert self.point_ids is not None and self.point_depths is not None and self.focals is not None
        where = np.searchsorted(self.point_ids[j], shared)
        depth = float(np.median(self.point_depths[j][where]))
        return float(self.focals[j]) / depth

    def scale_change(self, q: int, i: int) -> float:
        """max(s_q / s_i, s_i / s_q), s_j = focal_j / median depth of the shared points in j.

        ``inf`` when the images share no point or depths/focals are unknown.
        """
        if self.point_depths is None or self.focals is None:
            return float("inf")
        shared = self.shared_point_ids(q, i)
        if len(shared) == 0:
            return float("inf")
        s_q, s_i = self._apparent_size(q, shared), self._apparent_size(i, shared)
        return max(s_q / s_i, s_i / s_q)

    def co_observing(self, q: int) -> np.ndarray:
        """M(q): the other images of q's model sharing at least one 3D point with q.

        Without 3D points (imported db.pkl), all other images of q's model.
        """
        members = self.cluster_members(int(self.clusters[q]))
        others = members[members != q]
        if not self.has_points:
            return others
        return np.asarray([i for i in others if self.shared_points(q, int(i)) > 0], dtype=np.int64)
