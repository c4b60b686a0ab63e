"""The extraction API a Python user (and every command) calls: model + whitening + settings.

:class:`Extractor` holds what ``rkit extract`` needs besides the images: the model (built from
component specs or loaded from a saved model directory), the whitening file, and the extraction
settings. It runs :func:`retrievalkit.extract.extract_descriptors`, makes the descriptors file's
``meta``, and writes the output through :func:`write_descriptors`, the one place an extraction's
output is written (formats other than ``.npz`` plug in there)::

    from retrievalkit.extractor import ExtractionSettings, Extractor, write_descriptors
    from retrievalkit.images import list_images

    extractor = Extractor.open(ExtractionSettings(pooling="gem", image_size=448, whitening_file="lw.npz"))
    root, paths = list_images("photos/")
    result = extractor.extract(paths, root=root)
    write_descriptors("photos.npz", result, extractor.meta(result, root=root))

Sharding: :meth:`Extractor.extract_shard` computes one ``--shard K/N`` and
:func:`retrievalkit.shards.merge_shard_files` merges the shards into the descriptors a single
run would give; under ``torchrun``, ``extract(..., distributed=True)`` splits the work over
the ranks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RkitError
from .settings import ModelConfig

if TYPE_CHECKING:
    from .extract import ExtractionResult
    from .images import Box
    from .model import RetrievalModel
    from .whitening import FittedWhitening


@dataclasses.dataclass
class ExtractionSettings:
    """The model and extraction options, with ``rkit extract``'s defaults."""

    backbone: str = ModelConfig.backbone
    pooling: str = ModelConfig.pooling
    weights: str = ModelConfig.weights
    model_dir: Path | None = None
    whitening_file: Path | None = None
    image_size: int = 1024
    scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    batch_size: int = 16
    device: str = "auto"
    workers: int = 2
    max_batch_pixels: int | None = None  # None: retrievalkit.extract.DEFAULT_BATCH_PIXELS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (paths as strings)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExtractionSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        for name in ("model_dir", "whitening_file"):
            if values.get(name):
                values[name] = Path(values[name])
        return cls(**values)


def open_model(settings: ExtractionSettings) -> RetrievalModel:
    """The model of ``settings``: loaded from ``model_dir``, or built from its component specs."""
    from .model import build_model, load_model

    if settings.model_dir is not None:
        return load_model(settings.model_dir)
    return build_model(ModelConfig(backbone=settings.backbone, pooling=settings.pooling, weights=settings.weights))


def load_whitening_for(model: RetrievalModel, path: str | Path | None) -> FittedWhitening | None:
    """Read a whitening file (``rkit whiten fit``) and check that it fits the model's output."""
    if path is None:
        return None
    from .extract import check_whitening_fits
    from .whitening import FittedWhitening

    whitening = FittedWhitening.load(path)
    check_whitening_fits(model, whitening, str(path))
    return whitening


class Extractor:
    """A model, an optional whitening file and the settings: images in, descriptors out."""

    def __init__(self, settings: ExtractionSettings, model: RetrievalModel,
                 whitening: FittedWhitening | None = None) -> None:
        self.settings = settings
        self.model = model
        self.whitening = whitening

    @classmethod
    def open(cls, settings: ExtractionSettings) -> Extractor:
        """Build or load the model and read the whitening file of ``settings``."""
        model = open_model(settings)
        return cls(settings, model, load_whitening_for(model, settings.whitening_file))

    def _kwargs(self, progress: bool) -> dict[str, Any]:
        from .extract import DEFAULT_BATCH_PIXELS

        s = self.settings
        return {"image_size": s.image_size, "scales": list(s.scales), "batch_size": s.batch_size,
                "device": s.device, "num_workers": s.workers, "progress": progress,
                "max_batch_pixels": s.max_batch_pixels or DEFAULT_BATCH_PIXELS}

    def extract(self, paths: Sequence[str], *, root: Path | None = None, crops: Sequence[Box | None] | None = None,
                checkpoint: Path | None = None, checkpoint_every: float = 60.0, progress: bool = True,
                distributed: bool = False) -> ExtractionResult:
        """Whitened descriptors of ``paths`` (see :func:`retrievalkit.extract.extract_descriptors`)."""
        from .extract import extract_descriptors

        return extract_descriptors(self.model, paths, root=root, crops=crops, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, whitening=self.whitening,
                                   distributed=distributed, **self._kwargs(progress))

    def extract_shard(self, paths: Sequence[str], shard: tuple[int, int], out: Path, *, root: Path | None = None,
                      checkpoint: Path | None = None, checkpoint_every: float = 60.0, progress: bool = True) -> Any:
        """Compute shard ``(k, n)`` (0-based k) of the extraction and write it to ``out``."""
        from .shards import extract_shard

        return extract_shard(self, paths, shard, out, root=root, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every, progress=progress)

    def meta(self, result: ExtractionResult, *, root: Path | None = None, **extra: Any) -> dict[str, Any]:
        """The descriptors file's ``meta``: how the descriptors were made, and what failed."""
        from .extract import pooling_exponent

        s, model = self.settings, self.model
        meta = {
            "model": model.config.to_dict(),
            "model_dir": str(s.model_dir) if s.model_dir is not None else None,
            "image_size": s.image_size, "scales": list(s.scales),
            "whitening": self.whitening.describe(s.whitening_file) if self.whitening is not None else None,
            "input_mean": list(model.backbone.mean), "input_std": list(model.backbone.std),
            "pooling_p": pooling_exponent(model),
            "root": str(Path(root).resolve()) if root is not None else None,
            "failed": [[p, r] for p, r in result.failed], "seconds": round(result.seconds, 3),
            **extra,
        }
        return json.loads(json.dumps(meta, default=str))

    def summary(self, result: ExtractionResult, total: int, what: str = "images") -> str:
        """One line: how many images, how fast, with which model and settings."""
        s = self.settings
        return (f"{len(result.paths)} of {total} {what} -> {result.descriptors.shape[1]}-D descriptors in "
                f"{result.seconds:.1f} s ({result.images_per_second:.2f} images/s; {self.model.config.backbone}, "
                f"{self.model.config.pooling}, size {s.image_size}, scales {','.join(f'{x:g}' for x in s.scales)}"
                f"{', whitened' if self.whitening is not None else ''})")


def failure_lines(failed: Sequence[tuple[str, str]], limit: int = 20, where: str = "") -> list[str]:
    """The skipped images as report lines (at most ``limit``, then a count of the rest)."""
    lines = [f"  {path}: {reason}" for path, reason in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more{where}")
    return lines


def require_some(result: ExtractionResult, total: int, what: str = "images", hint: str = "check SOURCE") -> None:
    """Refuse an extraction in which no image could be read."""
    if not result.paths:
        first = "; ".join(f"{p}: {r}" for p, r in result.failed[:3])
        raise RkitError(f"none of the {total} {what} could be read ({first}): {hint}")


#: output format name -> writer(out, descriptors, paths, meta); "npz" is the descriptors file
WRITERS: dict[str, Callable[[Path, Any, list[str], dict[str, Any]], Path]] = {}


def _write_npz(out: Path, descriptors: Any, paths: list[str], meta: dict[str, Any]) -> Path:
    from .descriptors import DescriptorSet

    return DescriptorSet(descriptors, paths, meta).save(out)


def _write_h5(out: Path, descriptors: Any, paths: list[str], meta: dict[str, Any]) -> Path:
    """hloc's global-feature HDF5 (:mod:`retrievalkit.hloc`); image sizes read from ``meta['root']``."""
    from .hloc import raw_image_sizes, write_global_features

    return write_global_features(out, paths, descriptors, raw_image_sizes(meta.get("root"), paths), meta=meta)


def _write_store(dtype: str) -> Callable[[Path, Any, list[str], dict[str, Any]], Path]:
    def write(out: Path, descriptors: Any, paths: list[str], meta: dict[str, Any]) -> Path:
        """Append a shard to the descriptor store folder ``out`` (:mod:`retrievalkit.store`)."""
        from .store import write_store

        write_store(out, descriptors, paths, meta, dtype)
        return out

    return write


WRITERS["npz"] = _write_npz
WRITERS["h5"] = _write_h5
WRITERS["shards"] = _write_store("float32")
WRITERS["shards16"] = _write_store("float16")


def write_descriptors(out: str | Path, result: ExtractionResult, meta: dict[str, Any], fmt: str = "npz") -> Path:
    """Write an extraction's descriptors: the one output writer (atomic; ``WRITERS`` by format)."""
    if fmt not in WRITERS:
        raise RkitError(f"unknown output format {fmt!r}: use one of {', '.join(sorted(WRITERS))}")
    return WRITERS[fmt](Path(out), result.descriptors, list(result.paths), meta)
