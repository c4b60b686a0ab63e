"""Descriptor files: the float32 matrix of global descriptors plus the image paths.

The one format every job exchanges (``rkit extract`` writes it; ``whiten``, ``search``, ``eval``
read it). It is a NumPy ``.npz`` archive with:

``descriptors``  float32 ``(N, D)``, one L2-normalised row per image
``paths``        ``(N,)`` unicode, the image paths (as given, or relative to ``root``)
``meta``         a JSON string: how the descriptors were made (model config, image size,
                 scales, whitening, the images that failed and why)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RkitError
from .npzfile import load_npz, save_npz

FORMAT_VERSION = 1


@dataclasses.dataclass
class DescriptorSet:
    """Descriptors of a list of images, row ``i`` belonging to ``paths[i]``."""

    descriptors: np.ndarray
    paths: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.descriptors = np.ascontiguousarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != len(self.paths):
            raise ValueError(
                f"descriptors must be (N, D) with N = {len(self.paths)} paths, got {self.descriptors.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.npz``) atomically."""
        return save_npz(path, self.meta, FORMAT_VERSION, descriptors=self.descriptors,
                        paths=np.asarray(self.paths, dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> DescriptorSet:
        """Read a descriptors file written by :meth:`save` (``rkit extract``)."""
        arrays, meta = load_npz(path, ("descriptors", "paths"), what="descriptors file",
                                made_by="rkit extract", format_version=FORMAT_VERSION, meta_required=False)
        try:
            return cls(arrays["descriptors"], [str(p) for p in arrays["paths"]], meta)
        except ValueError as exc:  # not one (N, D) row per path
            raise RkitError(f"{path} is not a descriptors file written by `rkit extract` ({exc})") from exc
