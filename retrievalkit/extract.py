"""Global descriptors of many images, batched, multi-scale, robust to bad files (docs/definitions.md §1).

:func:`extract_descriptors` is what ``rkit extract`` and the trainer's mining step run. For every
image and every scale it resizes the image so that its longest side is ``image_size * scale``
(aspect ratio kept, see :func:`retrievalkit.images.resized_shape`), runs the model's backbone and
pooling and L2-normalises (:meth:`RetrievalModel.pooled`). The scales of one image are then
combined (docs/definitions.md §1): by the generalised mean with the pooling's exponent ``p`` when the
pooling has one (GeM), by the arithmetic mean otherwise, then L2-normalised; finally the model's
own whitening layer, if any, is applied and the result re-normalised (:meth:`RetrievalModel.whiten`).
Whitening is linear, so combining before it is the same as the usual "mean of whitened
descriptors" up to the normalisation, and keeps the generalised mean on non-negative values.

Batching. Images are decoded and resized by a ``torch.utils.data.DataLoader`` (``num_workers``
processes) and only images whose resized shape is *identical* are stacked into one batch
(:func:`group_batches`). Images of one camera share a shape, so a photo collection forms a few
large groups; an image with a unique shape is run alone. We chose this over padding (zeros
change MAC and SPoC, and GeM through the clamp) and over resizing a group to a common size
(distorts the aspect ratio), so the descriptor of an image never depends on its batch-mates.

Bad images. Files that are missing, corrupt, truncated or too small are listed in
:attr:`ExtractionResult.failed` with the reason and skipped; they never abort the run.

Resume. With ``checkpoint=PATH`` the finished (image, scale) vectors are saved to ``PATH`` every
``checkpoint_every`` seconds and when the run is interrupted; a new run with the same images,
sizes and model picks up from there and deletes the file when it completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import atomic_path
from .descriptors import l2_normalize
from .device import resolve_device
from .errors import RkitError
from .functional import generalized_mean
from .images import (Box, ImageLoadError, image_size as read_image_size, is_image_file, load_rgb,
                     resize_rgb, resized_shape, scaled_longest, to_uint8_array)
from .model import RetrievalModel

CHECKPOINT_FORMAT = 1


# -- listing images ---------------------------------------------------------------------------
def list_images(source: str | Path) -> tuple[Path, list[str]]:
    """The images named by ``source`` as ``(root, paths relative to root)``.

    ``source`` is a folder (searched recursively for :data:`~retrievalkit.images.IMAGE_EXTENSIONS`,
    hidden files and folders skipped, sorted by path), a single image file, or a text file with
    one path per line (relative to the list file's folder or absolute; blank lines and lines
    starting with ``#`` ignored; order kept).
    """
    source = Path(source)
    if source.is_dir():
        root = source
        paths = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not paths:
            raise RkitError(
                f"no images under {source} (looked for files ending in .jpg, .png, .tif, .bmp, .webp "
                f"...): point to a folder of images or to a text file listing image paths"
            )
        return root, paths
    if not source.exists():
        raise RkitError(f"{source} does not exist: give a folder of images or a text file with one image path per line")
    if is_image_file(source):
        return source.parent, [source.name]
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise RkitError(
            f"cannot read {source} as a list of image paths ({exc}): give a folder of images or a "
            f"UTF-8 text file with one path per line"
        ) from None
    paths = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not paths:
        raise RkitError(f"the list file {source} names no images: write one image path per line")
    return source.parent, paths


# -- the result -------------------------------------------------------------------------------
@dataclasses.dataclass
class ExtractionResult:
    """Descriptors of the images that could be read, and the reasons for the others.

    Attributes:
        descriptors: ``(N, D)`` float32, L2-normalised, row ``i`` for ``paths[i]``.
        paths: the successful paths as given, in input order.
        failed: ``(path, reason)`` for every image that was skipped, in input order.
        seconds: wall time of the extraction (decoding, network, combining).
    """

    descriptors: np.ndarray
    paths: list[str]
    failed: list[tuple[str, str]]
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        total = len(self.paths) + len(self.failed)
        return total / self.seconds if self.seconds > 0 else float("nan")


# -- work items and batching --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Item:
    image: int           # index into the input paths
    scale: int           # index into the scales
    file: str            # absolute path
    crop: Box | None
    shape: tuple[int, int]  # (height, width) after resizing


def group_batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of item indices such that every batch holds items of one identical shape.

    Items keep their input order inside a shape group; each group is cut into chunks of at most
    ``batch_size``; batches are ordered by their first item so progress follows the input.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, shape in enumerate(shapes):
        groups[tuple(shape)].append(index)
    batches = [members[i:i + batch_size] for members in groups.values()
               for i in range(0, len(members), max(1, batch_size))]
    return sorted(batches, key=lambda batch: batch[0])


class _ItemDataset(Dataset):
    """Decodes and resizes one (image, scale) item; a failure is returned, not raised."""

    def __init__(self, items: Sequence[_Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        item = self.items[index]
        height, width = item.shape
        try:
            rgb = load_rgb(item.file, crop=item.crop, size_hint=(width, height))
            return index, to_uint8_array(resize_rgb(rgb, item.shape)), ""
        except ImageLoadError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a decoder bug must not abort a long run either
            return index, None, f"cannot decode ({type(exc).__name__}: {exc})"


def _collate(samples: list[tuple[int, np.ndarray | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, a) for i, a, _ in samples if a is not None]
    bad = [(i, reason) for i, a, reason in samples if a is None]
    batch = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    return [i for i, _ in good], batch, bad


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# -- checkpoints --------------------------------------------------------------------------------
def partial_path(out: str | Path) -> Path:
    """The resume checkpoint of the descriptors file ``out``: ``NAME.npz`` -> ``NAME.partial.npz``."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.npz')}.partial.npz")


def _fingerprint(model: RetrievalModel, files: Sequence[str], crops: Sequence[Box | None],
                 image_size: int, scales: Sequence[float]) -> str:
    with torch.no_grad():
        weights_sum = float(sum(p.detach().double().sum().item() for p in model.state_dict().values()
                                if p.is_floating_point()))
    payload = json.dumps([list(files), [list(c) if c else None for c in crops], image_size,
                          list(scales), model.config.to_dict(), model.out_dim, f"{weights_sum:.10e}"])
    return hashlib.sha256(payload.encode()).hexdigest()


def _load_checkpoint(path: Path, fingerprint: str) -> tuple[dict[tuple[int, int], np.ndarray], dict[int, str]]:
    if not path.is_file():
        return {}, {}
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            keys, vectors = data["keys"], data["vectors"]
    except (OSError, KeyError, ValueError) as exc:
        raise RkitError(f"cannot read the extraction checkpoint {path} ({exc}): delete it to start over") from None
    if header.get("fingerprint") != fingerprint:
        raise RkitError(
            f"the checkpoint {path} belongs to another extraction (different images, sizes or model): "
            f"delete it, or write the output elsewhere"
        )
    done = {(int(i), int(s)): vectors[row] for row, (i, s) in enumerate(keys)}
    failed = {int(k): v for k, v in header.get("failed", {}).items()}
    return done, failed


def _save_checkpoint(path: Path, fingerprint: str, done: dict[tuple[int, int], np.ndarray],
                     failed: dict[int, str]) -> None:
    keys = np.array(list(done), dtype=np.int64).reshape(-1, 2)
    vectors = np.stack(list(done.values())).astype(np.float32) if done else np.zeros((0, 0), np.float32)
    header = json.dumps({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                         "failed": {str(k): v for k, v in failed.items()}})
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, keys=keys, vectors=vectors, header=np.asarray(header))


# -- combining scales --------------------------------------------------------------------------------
def parse_scales(text: str, separator: str = ",", what: str = "scales") -> tuple[float, ...]:
    """Read a list of positive scales: ``"1,0.707,0.5"`` -> ``(1.0, 0.707, 0.5)``.

    ``rkit extract --scales`` separates them by commas; an ablation grid value, whose values are
    already comma-separated, joins them with ``+`` (``separator="+"``). ``what`` names the
    value in the error message (``--scales`` on the command line).
    """
    example = separator.join(["1", "0.707", "0.5"])
    message = f"{what} {text!r}: write positive numbers separated by {separator!r}, e.g. {example}"
    try:
        scales = tuple(float(part) for part in str(text).split(separator) if part.strip())
    except ValueError:
        raise RkitError(message) from None
    if not scales or any(not s > 0 or s == float("inf") for s in scales):
        raise RkitError(message)
    return scales


def combine_scales(per_scale: torch.Tensor, p: float | None) -> torch.Tensor:
    """Combine ``(S, ..., D)`` L2-normalised descriptors of S scales into L2-normalised ``(..., D)``.

    docs/definitions.md §1: the generalised mean with exponent ``p`` (the pooling's GeM p) if given,
    else the arithmetic mean; then L2 normalisation. One scale is returned unchanged.
    """
    if per_scale.shape[0] == 1:
        return per_scale[0]
    combined = per_scale.mean(dim=0) if p is None else generalized_mean(per_scale, p, dim=0)
    return l2_normalize(combined)


def pooling_exponent(model: RetrievalModel) -> float | None:
    """The pooling's generalised-mean exponent ``p`` (a number or a one-element tensor), if any."""
    p = getattr(model.pooling, "p", None)
    if p is None:
        return None
    value = float(p.detach().reshape(-1)[0]) if isinstance(p, torch.Tensor) else float(p)
    return value if np.isfinite(value) and value > 0 else None


# -- extraction ----------------------------------------------------------------------------------
def extract_descriptors(
    model: RetrievalModel,
    paths: Sequence[str | Path],
    *,
    root: Path | None = None,
    image_size: int = 1024,
    scales: Sequence[float] = (1.0,),
    batch_size: int = 16,
    device: str | torch.device = "auto",
    num_workers: int = 2,
    progress: bool = True,
    crops: Sequence[Box | None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 60.0,
) -> ExtractionResult:
    """Descriptors of ``paths`` with ``model`` (see the module docstring for what is computed).

    Args:
        model: the network; its train/eval mode is restored afterwards, it is moved to ``device``.
        paths: image paths, relative to ``root`` if given.
        root: folder the paths are relative to.
        image_size: longest side in pixels at scale 1.
        scales: multiplied with ``image_size``; several scales are combined per image.
        batch_size: most images of one shape per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` ... or a ``torch.device``.
        num_workers: decoding processes (0: decode in this process).
        progress: show a tqdm progress bar.
        crops: per path, a box ``(x1, y1, x2, y2)`` in original pixels or ``None``.
        checkpoint: file to save partial results to and resume from (see module docstring).
        checkpoint_every: seconds between checkpoint saves.

    Returns:
        An :class:`ExtractionResult` (the successful images in input order, and the failures).
    """
    started = time.perf_counter()
    paths = [str(p) for p in paths]
    scales = [float(s) for s in scales]
    if not scales:
        raise RkitError("no scales given: use e.g. --scales 1 or --scales 1,0.707,0.5")
    if batch_size < 1:
        raise RkitError(f"batch size must be at least 1, got {batch_size}")
    if crops is not None and len(crops) != len(paths):
        raise RkitError(f"{len(crops)} crop boxes for {len(paths)} images: give one box (or None) per image")
    crops = list(crops) if crops is not None else [None] * len(paths)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    longest = [scaled_longest(image_size, s) for s in scales]
    files = [str(Path(root) / p) if root is not None else p for p in paths]

    failed: dict[int, str] = {}
    items: list[_Item] = []
    for index, (file, crop) in enumerate(zip(files, crops)):
        try:
            width, height = read_image_size(file, crop)
        except ImageLoadError as exc:
            failed[index] = str(exc)
            continue
        for scale_index, side in enumerate(longest):
            items.append(_Item(index, scale_index, file, crop, resized_shape(width, height, side)))

    fingerprint = ""
    done: dict[tuple[int, int], np.ndarray] = {}
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_path is not None:
        fingerprint = _fingerprint(model, files, crops, image_size, scales)
        done, previously_failed = _load_checkpoint(checkpoint_path, fingerprint)
        failed.update(previously_failed)
    todo = [item for item in items if (item.image, item.scale) not in done and item.image not in failed]
    batches = group_batches([item.shape for item in todo], batch_size)

    was_training = model.training
    model.eval()
    model.to(torch_device)
    loader = DataLoader(
        _ItemDataset(todo), batch_sampler=batches, collate_fn=_collate,
        num_workers=num_workers if len(batches) > 1 else 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=torch_device.type == "cuda",
    )
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="img", disable=not progress,
               desc="extract" if len(scales) == 1 else f"extract ({len(scales)} scales)", dynamic_ncols=True)
    last_save = time.monotonic()
    try:
        with torch.inference_mode():
            for indices, batch, bad in loader:
                for item_index, reason in bad:
                    failed.setdefault(todo[item_index].image, reason)
                if batch is not None:
                    images = batch.to(torch_device, non_blocking=True).float().div_(255.0)
                    pooled = model.pooled(images).float().cpu().numpy()
                    for row, item_index in enumerate(indices):
                        item = todo[item_index]
                        done[(item.image, item.scale)] = pooled[row]
                bar.update(len(indices) + len(bad))
                if checkpoint_path is not None and time.monotonic() - last_save > checkpoint_every:
                    _save_checkpoint(checkpoint_path, fingerprint, done, failed)
                    last_save = time.monotonic()
    except BaseException:
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, fingerprint, done, failed)
        raise
    finally:
        bar.close()
        model.train(was_training)

    descriptors, kept = _combine(model, done, failed, len(paths), len(scales), torch_device)
    if checkpoint_path is not None and checkpoint_path.exists():
        checkpoint_path.unlink()
    return ExtractionResult(
        descriptors=descriptors,
        paths=[paths[i] for i in kept],
        failed=[(paths[i], failed[i]) for i in sorted(failed)],
        seconds=time.perf_counter() - started,
    )


def _combine(model: RetrievalModel, done: dict[tuple[int, int], np.ndarray], failed: dict[int, str],
             num_images: int, num_scales: int, device: torch.device) -> tuple[np.ndarray, list[int]]:
    kept = [i for i in range(num_images)
            if i not in failed and all((i, s) in done for s in range(num_scales))]
    if not kept:
        return np.zeros((0, model.out_dim), dtype=np.float32), []
    per_scale = torch.from_numpy(np.stack([np.stack([done[(i, s)] for i in kept]) for s in range(num_scales)]))
    combined = combine_scales(per_scale, pooling_exponent(model))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = torch.cat([model.whiten(chunk.to(device)).float().cpu() for chunk in combined.split(4096)])
    model.train(was_training)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32), kept

