"""Descriptor files: the float32 matrix of global descriptors plus the image paths.

The one format every job exchanges (``rkit extract`` writes it; ``whiten``, ``search``, ``eval``
read it). It is a NumPy ``.npz`` archive with:

``descriptors``  float32 ``(N, D)``, one L2-normalised row per image
``paths``        ``(N,)`` unicode, the image paths (as given, or relative to ``root``)
``meta``         a JSON string: how the descriptors were made (model config, image size,
                 scales, whitening, the images that failed and why)

Descriptors must be finite real numbers: one NaN row silently corrupts every ranking it takes
part in (a NaN similarity sorts anywhere). :func:`check_finite` is the one check, called where
descriptors are *read* (:meth:`DescriptorSet.load`, the index entry in
:mod:`retrievalkit.index`) and where they are *made* (extraction, whitening).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RkitError, RkitWarning
from .npzfile import load_npz, save_npz

FORMAT_VERSION = 1
#: how many bad row numbers (and paths) a non-finite error message lists
_SHOWN_ROWS = 5


#: rows shorter than this are divided by it instead (a zero row stays zero)
L2_EPS = 1e-12


def l2_normalize(x: Any, eps: float = L2_EPS) -> Any:
    """Divide each row (last axis) by its Euclidean length: the one L2 step of the data path.

    ``x / max(||x||, eps)`` for a NumPy array or a torch tensor (differentiable), as
    docs/definitions.md §1 places it: after pooling, after combining scales, after whitening.
    """
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp(min=eps)


class NonFiniteDescriptorsError(RkitError):
    """Descriptors with NaN or infinite values (the message names the source and the rows)."""


def check_finite(descriptors: np.ndarray, source: str, *, paths: Sequence[str] | None = None,
                 hint: str = "re-create them (`rkit extract`) and check the model and options that made them"
                 ) -> np.ndarray:
    """Refuse descriptors holding NaN or infinite values; return them unchanged otherwise.

    Args:
        descriptors: ``(N, D)`` (or ``(D,)``) real numbers.
        source: what they are, for the message: a file name, "the query descriptors", ...
        paths: the image of each row, to name the first bad ones.
        hint: what the user should do, appended to the message.

    Raises:
        NonFiniteDescriptorsError: naming ``source``, how many rows are bad and the first few.
    """
    array = np.asarray(descriptors)
    if array.dtype.kind == "c":
        raise NonFiniteDescriptorsError(
            f"{source}: the descriptors are complex numbers ({array.dtype}); descriptors are real: {hint}")
    if array.dtype.kind not in "fiub":
        raise NonFiniteDescriptorsError(
            f"{source}: the descriptors are not numbers (dtype {array.dtype}): {hint}")
    rows = _non_finite_rows(array)
    if not rows.size:
        return descriptors
    total = array.shape[0] if array.ndim > 1 else 1
    if paths is not None and len(paths) != total:
        paths = None
    shown = ", ".join(str(int(r)) + (f" ({paths[int(r)]})" if paths is not None else "") for r in rows[:_SHOWN_ROWS])
    more = f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    raise NonFiniteDescriptorsError(
        f"{source}: {len(rows)} of {total} descriptors hold NaN or infinite values (row {shown}{more}); "
        f"they cannot be ranked: {hint}")


def _non_finite_rows(array: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Row numbers holding a NaN or infinity, checked in blocks of rows (bounded memory, memmaps too)."""
    if array.ndim < 2:
        return np.array([0]) if not np.isfinite(array).all() else np.array([], dtype=np.int64)
    flat = array.reshape(array.shape[0], -1) if array.size else array[:, :0]
    bad = [start + np.flatnonzero(~np.isfinite(flat[start:start + block]).all(axis=1))
           for start in range(0, flat.shape[0], block)]
    return np.concatenate(bad) if bad else np.array([], dtype=np.int64)


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

    def whitened(self, whitening: Any, file: str | Path | None = None) -> DescriptorSet:
        """These descriptors whitened by a fitted whitening, the meta recording it (and ``file``).

        ``whitening`` is a :class:`retrievalkit.whitening.FittedWhitening`. Whitening descriptors
        that are already whitened composes the two: that is warned about (:class:`RkitWarning`).
        """
        if self.meta.get("whitening"):
            warnings.warn(f"these descriptors are already whitened ({self.meta['whitening'].get('method')}); "
                          f"whitening them again composes the two whitenings", RkitWarning, stacklevel=2)
        meta = {k: v for k, v in self.meta.items() if k != "format_version"}
        meta["whitening"] = whitening.describe(file)
        return DescriptorSet(whitening.apply(self.descriptors), self.paths, meta)

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.npz``) atomically."""
        return save_npz(path, self.meta, FORMAT_VERSION, descriptors=self.descriptors,
                        paths=np.asarray(self.paths, dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> DescriptorSet:
        """Read a descriptors file written by :meth:`save` (``rkit extract``).

        Raises:
            RkitError: a missing, damaged or foreign file, or one from a newer format.
            NonFiniteDescriptorsError: complex, non-numeric, NaN or infinite descriptors.
        """
        arrays, meta = load_npz(path, ("descriptors", "paths"), what="descriptors file",
                                made_by="rkit extract", format_version=FORMAT_VERSION, meta_required=False)
        paths = [str(p) for p in arrays["paths"]] if arrays["paths"].ndim == 1 else None
        check_finite(arrays["descriptors"], f"descriptors file {path}", paths=paths,
                     hint="re-create the file with `rkit extract` (and `rkit whiten apply`)")
        try:
            return cls(arrays["descriptors"], paths if paths is not None else [], meta)
        except ValueError as exc:  # not one (N, D) row per path
            raise RkitError(f"{path} is not a descriptors file written by `rkit extract` ({exc})") from exc
