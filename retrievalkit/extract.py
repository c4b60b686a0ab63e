"""Global descriptors of many images, batched, multi-scale, robust to bad files (docs/definitions.md §1).

:func:`extract_descriptors` is what ``rkit extract`` and the trainer's mining step run. For every
image and every scale it resizes the image so that its longest side is ``image_size * scale``
(aspect ratio kept, see :func:`retrievalkit.images.resized_shape`), runs the model's backbone and
pooling and L2-normalises (:meth:`RetrievalModel.pooled`). The scales of one image are then
combined (docs/definitions.md §1): by the generalised mean with the pooling's exponent ``p`` when the
pooling has one (GeM), by the arithmetic mean otherwise, then L2-normalised; finally the model's
own whitening layer, if any, and a whitening file (``whitening=``), if given, are applied
(both re-normalise). This is how the authors' code applies a fitted whitening (Lw) to
multi-scale descriptors: after the combination, which keeps the generalised mean on
non-negative values. A network whose whitening is part of it (the authors' ``-w`` networks,
:attr:`RetrievalModel.whiten_each_scale`) whitens and re-normalises each scale instead, and
the whitened scales are averaged (arithmetic mean, then L2), as their ``extract_ms`` does with
``msp = 1`` for such networks.

The stages, one function each: :func:`plan_extraction` (read every image's size from its
header; unreadable files are failures), :func:`plan_batches` (which items go through the network
together), :func:`run_batches` (decode, forward, check, checkpoint) and
:func:`finish_descriptors` (combine scales, whiten, check). :func:`pool_share` runs the first
three for one share of the batches: the whole set, one ``--shard K/N``, or one rank of a
``torchrun`` job (:mod:`retrievalkit.shards` gathers and merges the shares).

Batching. Images are decoded and resized by a ``torch.utils.data.DataLoader`` (``num_workers``
processes) and only images whose resized shape is *identical* are stacked into one batch
(:func:`group_batches`), so the descriptor of an image never depends on its batch-mates (no
padding, no distortion). A batch holds at most ``batch_size`` images and at most
``max_batch_pixels`` pixels: large images go through in small batches (at 1024 px, two photos),
small ones in large batches (at 448 px, up to 13). On CPU every activation of a large batch is
a fresh block of memory from the kernel: glibc serves blocks above its mmap threshold (at most
32 MB) with a new mapping that is zero-filled page by page on first touch and unmapped on free,
so a batch of 16 images at 1024 px spent more time in page faults than in convolutions and
peaked at 4-5 GB. :func:`retrievalkit.memory.reuse_freed_memory` keeps freed blocks in the
process for the time of the extraction, and the pixel budget bounds the peak (see
docs/extraction.md for the measurements).

Bad images. Files that are missing, corrupt, truncated or too small are listed in
:attr:`ExtractionResult.failed` with the reason and skipped; they never abort the run. A
network output that is not finite (NaN or infinity, e.g. an overflowing pooling) is refused
with a clear error, never written.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import atomic_path
from .descriptors import NonFiniteDescriptorsError, check_finite, l2_normalize
from .device import resolve_device
from .errors import RkitError
from .functional import generalized_mean
from .images import (Box, ImageLoadError, image_size as read_image_size, list_images, load_rgb,  # noqa: F401
                     resize_rgb, resized_shape, scaled_longest, to_uint8_array)
from .memory import reuse_freed_memory
from .model import RetrievalModel

if TYPE_CHECKING:
    from .whitening import FittedWhitening

CHECKPOINT_FORMAT = 1
#: Most pixels (height x width, summed over the images) in one forward pass by default.
DEFAULT_BATCH_PIXELS = 2**21

#: (image index, scale index) -> the pooled, L2-normalised vector of that image at that scale
Pooled = dict[tuple[int, int], np.ndarray]


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


def group_batches(shapes: Sequence[tuple[int, int]], batch_size: int,
                  max_pixels: int | None = None) -> list[list[int]]:
    """Batches of item indices such that every batch holds items of one identical shape.

    Items keep their input order inside a shape group; each group is cut into chunks of at most
    ``batch_size`` items and, when ``max_pixels`` is given, at most ``max_pixels`` pixels (never
    fewer than one item); batches are ordered by their first item so progress follows the input.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, shape in enumerate(shapes):
        groups[tuple(shape)].append(index)
    batches = []
    for (height, width), members in groups.items():
        size = max(1, batch_size)
        if max_pixels is not None:
            size = max(1, min(size, max_pixels // max(1, height * width)))
        batches += [members[i:i + size] for i in range(0, len(members), size)]
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


# -- checkpoints and shard files: pooled vectors on disk ---------------------------------------------
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


def load_pooled(path: Path, what: str = "extraction checkpoint") -> tuple[dict[str, Any], Pooled, dict[int, str]]:
    """Read a file of pooled vectors (a checkpoint or a shard): ``(header, pooled, failed)``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            keys, vectors = data["keys"], data["vectors"]
        pooled = {(int(i), int(s)): vectors[row] for row, (i, s) in enumerate(keys)}
        failed = {int(k): str(v) for k, v in header.get("failed", {}).items()}
    except KeyError as exc:
        raise RkitError(f"{path} is not an {what} ({exc.args[0] if exc.args else exc}): give a file that "
                        f"`rkit extract` wrote as one") from None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise RkitError(f"cannot read the {what} {path} ({type(exc).__name__}: {exc}): delete it and run "
                        f"the extraction again") from None
    except Exception as exc:  # zipfile.BadZipFile and friends: a truncated file
        raise RkitError(f"the {what} {path} is damaged ({type(exc).__name__}: {exc}): delete it and run "
                        f"the extraction again") from None
    return header, pooled, failed


def save_pooled(path: Path, header: dict[str, Any], pooled: Pooled, failed: dict[int, str]) -> None:
    """Write pooled vectors atomically (the checkpoint and shard format, see :func:`load_pooled`)."""
    keys = np.array(list(pooled), dtype=np.int64).reshape(-1, 2)
    vectors = np.stack(list(pooled.values())).astype(np.float32) if pooled else np.zeros((0, 0), np.float32)
    header = {"format": CHECKPOINT_FORMAT, **header, "failed": {str(k): v for k, v in failed.items()}}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, keys=keys, vectors=vectors, header=np.asarray(json.dumps(header)))


def _resume(path: Path | None, fingerprint: str) -> tuple[Pooled, dict[int, str]]:
    if path is None or not path.is_file():
        return {}, {}
    header, pooled, failed = load_pooled(path)
    if header.get("fingerprint") != fingerprint:
        raise RkitError(
            f"the checkpoint {path} belongs to another extraction (different images, sizes or model): "
            f"delete it, or write the output elsewhere"
        )
    return pooled, failed


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


# -- stage 1: plan ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExtractionPlan:
    """What to compute: the (image, scale) items with their resized shapes, and header failures."""

    paths: list[str]
    files: list[str]
    crops: list[Box | None]
    image_size: int
    scales: list[float]
    items: list[_Item]
    failed: dict[int, str]

    def fingerprint(self, model: RetrievalModel) -> str:
        """A hash of the images, crops, sizes and model (weights included)."""
        return _fingerprint(model, self.files, self.crops, self.image_size, self.scales)


def plan_extraction(paths: Sequence[str | Path], *, root: Path | None = None, image_size: int = 1024,
                    scales: Sequence[float] = (1.0,), crops: Sequence[Box | None] | None = None) -> ExtractionPlan:
    """Check the arguments and read every image's size (header only); unreadable files fail here."""
    paths = [str(p) for p in paths]
    scales = [float(s) for s in scales]
    if not scales:
        raise RkitError("no scales given: use e.g. --scales 1 or --scales 1,0.707,0.5")
    if crops is not None and len(crops) != len(paths):
        raise RkitError(f"{len(crops)} crop boxes for {len(paths)} images: give one box (or None) per image")
    crops = list(crops) if crops is not None else [None] * len(paths)
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
        items += [_Item(index, s, file, crop, resized_shape(width, height, side)) for s, side in enumerate(longest)]
    return ExtractionPlan(paths, files, crops, image_size, scales, items, failed)


def plan_batches(items: Sequence[_Item], batch_size: int, max_pixels: int | None = DEFAULT_BATCH_PIXELS,
                 share: tuple[int, int] = (0, 1)) -> list[list[int]]:
    """The batches of ``items`` (indices) that share ``(k, n)`` computes: every n-th from the k-th.

    The batches are those of the whole set (:func:`group_batches`), so an item goes through the
    network with the same batch-mates whichever share runs it: n shares (ranks) give exactly the
    descriptors of one process.
    """
    if batch_size < 1:
        raise RkitError(f"batch size must be at least 1, got {batch_size}")
    if max_pixels is not None and max_pixels < 1:
        raise RkitError(f"the pixel budget of a batch must be positive, got {max_pixels}")
    k, n = share
    return group_batches([item.shape for item in items], batch_size, max_pixels)[k::n]


# -- stage 2: run the network ------------------------------------------------------------------------------
def _checked(pooled: torch.Tensor, items: Sequence[_Item], model: RetrievalModel) -> np.ndarray:
    """The batch's vectors as float32 NumPy, refusing NaN or infinity (a model or pooling overflow)."""
    vectors = pooled.float().cpu().numpy()
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        names = ", ".join(Path(items[row].file).name for row in np.flatnonzero(bad)[:3])
        raise NonFiniteDescriptorsError(
            f"the network gave non-finite (NaN or infinite) descriptors for {int(bad.sum())} image(s) ({names}) "
            f"with {model.config.backbone} and pooling {model.config.pooling}: an activation or the pooling "
            f"overflows; check the weights, or use a smaller pooling exponent (e.g. gem:p=3). Nothing was written"
        )
    return vectors


def run_batches(model: RetrievalModel, items: Sequence[_Item], batches: Sequence[Sequence[int]], *,
                device: torch.device, num_workers: int, pooled: Pooled, failed: dict[int, str],
                progress: tqdm, save: Callable[[], None] | None = None, checkpoint_every: float = 60.0) -> None:
    """Decode and run ``batches`` of ``items`` through ``model``; results go into ``pooled``/``failed``.

    ``save`` (if given) is called every ``checkpoint_every`` seconds and on any interruption or
    error, so finished work is never lost.
    """
    loader = DataLoader(
        _ItemDataset(items), batch_sampler=batches, collate_fn=_collate,
        num_workers=num_workers if len(batches) > 1 else 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    last_save = time.monotonic()
    try:
        with torch.inference_mode(), reuse_freed_memory():
            for indices, batch, bad in loader:
                for item_index, reason in bad:
                    failed.setdefault(items[item_index].image, reason)
                if batch is not None:
                    images = batch.to(device, non_blocking=True).float().div_(255.0)
                    vectors = _checked(model.pooled(images), [items[i] for i in indices], model)
                    for row, item_index in enumerate(indices):
                        pooled[(items[item_index].image, items[item_index].scale)] = vectors[row]
                progress.update(len(indices) + len(bad))
                if save is not None and time.monotonic() - last_save > checkpoint_every:
                    save()
                    last_save = time.monotonic()
    except BaseException:
        if save is not None:
            save()
        raise


@dataclasses.dataclass
class PooledShare:
    """What one share of an extraction computed: its plan, pooled vectors and failures."""

    plan: ExtractionPlan
    pooled: Pooled
    failed: dict[int, str]
    fingerprint: str
    seconds: float


def pool_share(model: RetrievalModel, plan: ExtractionPlan, *, share: tuple[int, int] = (0, 1),
               batch_size: int = 16, max_batch_pixels: int | None = DEFAULT_BATCH_PIXELS,
               device: str | torch.device = "auto", num_workers: int = 2, progress: bool = True,
               checkpoint: str | Path | None = None, checkpoint_every: float = 60.0) -> PooledShare:
    """Run the network over share ``(k, n)`` of the plan's batches, resuming from ``checkpoint``.

    Header failures are reported by the share whose number is the image index modulo n (each
    failure exactly once over the shares).
    """
    started = time.perf_counter()
    k, n = share
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    failed = {i: reason for i, reason in plan.failed.items() if i % n == k}
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = plan.fingerprint(model)
    pooled, previously_failed = _resume(checkpoint_path, fingerprint)
    failed.update(previously_failed)
    batches = plan_batches(plan.items, batch_size, max_batch_pixels, share)
    to_do = lambda item: (item.image, item.scale) not in pooled and item.image not in failed  # noqa: E731
    todo_batches = [kept for kept in ([i for i in batch if to_do(plan.items[i])] for batch in batches) if kept]
    mine, todo = sum(map(len, batches)), sum(map(len, todo_batches))
    save = None
    if checkpoint_path is not None:
        save = lambda: save_pooled(checkpoint_path, {"fingerprint": fingerprint}, pooled, failed)  # noqa: E731
    was_training = model.training
    model.eval()
    model.to(torch_device)
    bar = tqdm(total=mine, initial=mine - todo, unit="img", disable=not progress,
               desc="extract" if len(plan.scales) == 1 else f"extract ({len(plan.scales)} scales)", dynamic_ncols=True)
    try:
        run_batches(model, plan.items, todo_batches, device=torch_device, num_workers=num_workers, pooled=pooled,
                    failed=failed, progress=bar, save=save, checkpoint_every=checkpoint_every)
    finally:
        bar.close()
        model.train(was_training)
    return PooledShare(plan, pooled, failed, fingerprint, time.perf_counter() - started)


# -- stage 3: combine, whiten, check -----------------------------------------------------------------------
def finish_descriptors(model: RetrievalModel, plan: ExtractionPlan, pooled: Pooled, failed: dict[int, str],
                       whitening: FittedWhitening | None = None, seconds: float = 0.0) -> ExtractionResult:
    """Combine each image's scales, apply the model's whitening layer and ``whitening``, check.

    The one place descriptors are finished, whether the pooled vectors come from this process,
    from the ranks of a ``torchrun`` job or from shard files.
    """
    num_scales = len(plan.scales)
    kept = [i for i in range(len(plan.paths))
            if i not in failed and all((i, s) in pooled for s in range(num_scales))]
    out_dim = whitening.out_dim if whitening is not None else model.out_dim
    descriptors = np.zeros((0, out_dim), dtype=np.float32)
    if kept:
        per_scale = torch.from_numpy(np.stack([np.stack([pooled[(i, s)] for i in kept]) for s in range(num_scales)]))
        with torch.inference_mode():
            if model.whiten_each_scale and model.whitening is not None:    # the authors' -w networks
                combined = combine_scales(torch.stack([model.whiten(scale) for scale in per_scale]), None)
            else:
                combined = model.whiten(combine_scales(per_scale, pooling_exponent(model)))
            descriptors = combined.float().numpy()
        if whitening is not None:
            descriptors = whitening.apply(descriptors)
        check_finite(descriptors, "the extraction", paths=[plan.paths[i] for i in kept],
                     hint="the model or whitening overflows; nothing was written")
    return ExtractionResult(
        descriptors=np.ascontiguousarray(descriptors, dtype=np.float32),
        paths=[plan.paths[i] for i in kept],
        failed=[(plan.paths[i], failed[i]) for i in sorted(failed)],
        seconds=seconds,
    )


def check_whitening_fits(model: RetrievalModel, whitening: FittedWhitening | None, name: str = "the whitening") -> None:
    """Refuse a whitening whose input dimension is not the model's output dimension."""
    if whitening is not None and whitening.in_dim != model.out_dim:
        raise RkitError(f"{name} whitens {whitening.in_dim}-D descriptors but this model gives "
                        f"{model.out_dim}-D ones: fit the whitening on descriptors of the same model")


# -- the whole extraction --------------------------------------------------------------------------------
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
    whitening: FittedWhitening | None = None,
    max_batch_pixels: int | None = DEFAULT_BATCH_PIXELS,
    distributed: bool = False,
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
        whitening: a fitted whitening (``rkit whiten fit``) applied to the finished descriptors.
        max_batch_pixels: most pixels in one forward pass (``None``: only ``batch_size`` counts).
        distributed: split the batches over the ranks of the initialised ``torch.distributed``
            process group (``torchrun``) and gather them; every rank returns the full result
            (see :mod:`retrievalkit.shards`). Each rank checkpoints to its own file.

    Returns:
        An :class:`ExtractionResult` (the successful images in input order, and the failures).
    """
    started = time.perf_counter()
    check_whitening_fits(model, whitening)
    plan = plan_extraction(paths, root=root, image_size=image_size, scales=scales, crops=crops)
    share = (0, 1)
    if distributed:
        from .shards import distributed_share, rank_checkpoint

        share = distributed_share()
        checkpoint = rank_checkpoint(checkpoint, share) if checkpoint is not None else None
    result = pool_share(model, plan, share=share, batch_size=batch_size, max_batch_pixels=max_batch_pixels,
                        device=device, num_workers=num_workers, progress=progress, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every)
    pooled, failed = result.pooled, result.failed
    if share[1] > 1:
        from .shards import gather_share

        pooled, failed = gather_share(pooled, failed)
    finished = finish_descriptors(model, plan, pooled, failed, whitening, time.perf_counter() - started)
    if checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    return finished
