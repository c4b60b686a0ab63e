"""The trainer's input pipeline: training images decoded by DataLoader workers, shape-grouped.

One :class:`ImageGroupsDataset` item is a list of database images (all images of one training
step, or one batch of the mining extraction). A worker process decodes and resizes each image
exactly as extraction does (:mod:`retrievalkit.images`: EXIF orientation, RGB, longest side =
``image_size``, aspect ratio kept) and returns the images grouped by resized shape, each group
stacked into one ``(B, 3, H, W)`` uint8 tensor: the trainer runs a group through the network in
one forward pass. Images of one camera (one orientation) share a shape, so a step of photos
forms a few groups; no image is padded or distorted, so its descriptor never depends on its
batch-mates (with batch-norm frozen, the default).

Memory stays flat: nothing is kept after a step except the pixel cache file below, on disk.

Decode once per epoch. The mining extraction decodes the queries and the negative pool; while
doing so it appends the resized pixels to a per-epoch :class:`PixelCache` file, and the training
steps of that epoch read an image's pixels from there instead of decoding the photo again.

Unreadable images come back as ``failed`` entries (database index, reason), never as
exceptions, so one bad file never stops a worker or the run.

Workers die with their parent: :func:`worker_init` asks Linux (``prctl(PR_SET_PDEATHSIG)``) to
kill a worker when the process that started it dies, even by ``kill -9``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageLoadError, image_size, load_rgb, resize_rgb, resized_shape, to_uint8_array

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Make this process receive SIGKILL when its parent dies (Linux; elsewhere a no-op).

    If the parent already died before the request took effect (``parent_pid`` given and no
    longer the parent), exit at once. Returns whether the request was made.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)
    return done


class WorkerInit:
    """``worker_init_fn`` of every trainer DataLoader: one torch thread, die with the parent."""

    def __init__(self) -> None:
        self.parent_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(1)
        die_with_parent(self.parent_pid)


class PixelCache:
    """Resized uint8 pixels of images, appended to one file; read back by database index.

    The mining extraction of an epoch writes (:meth:`add`), the training steps read
    (:meth:`read`, also from worker processes: the object pickles as its path and index).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index: dict[int, tuple[int, int, int]] = {}   # image -> (offset, height, width)
        self._end = 0
        self._file: Any = None

    def open(self) -> PixelCache:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self.index, self._end = {}, 0
        return self

    def add(self, ids: Sequence[int], images: torch.Tensor) -> None:
        """Append a ``(B, 3, H, W)`` uint8 batch for the database images ``ids``."""
        array = images.numpy() if images.device.type == "cpu" else images.cpu().numpy()
        _, _, height, width = array.shape
        for row, image in enumerate(ids):
            self._file.write(np.ascontiguousarray(array[row]).tobytes())
            self.index[int(image)] = (self._end, height, width)
            self._end += 3 * height * width

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, image: int) -> np.ndarray | None:
        where = self.index.get(int(image))
        if where is None:
            return None
        offset, height, width = where
        return np.fromfile(self.path, dtype=np.uint8, count=3 * height * width,
                           offset=offset).reshape(3, height, width)

    def remove(self) -> None:
        self.finish()
        self.index = {}
        self.path.unlink(missing_ok=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "index": self.index, "_end": self._end, "_file": None}


def decode_image(path: Path, longest: int) -> np.ndarray:
    """``(3, H, W)`` uint8 pixels of ``path`` with the longest side ``longest`` (aspect kept)."""
    width, height = image_size(path)
    shape = resized_shape(width, height, longest)
    return to_uint8_array(resize_rgb(load_rgb(path, size_hint=(shape[1], shape[0])), shape))


class ImageGroupsDataset(Dataset):
    """Item ``k``: the images ``items[k]`` decoded and grouped by shape (module docstring).

    Returns ``{"ids": [LongTensor], "images": [uint8 (B, 3, H, W)], "failed": [(id, reason)]}``
    with one entry of ``ids``/``images`` per distinct shape, in order of first appearance.
    """

    def __init__(self, paths: Sequence[Path], items: Sequence[np.ndarray], longest: int,
                 cache: PixelCache | None = None) -> None:
        self.paths = list(paths)
        self.items = list(items)
        self.longest = longest
        self.cache = cache

    def __len__(self) -> int:
        return len(self.items)

    def load(self, image: int) -> np.ndarray:
        cached = self.cache.read(image) if self.cache is not None else None
        return cached if cached is not None else decode_image(self.paths[image], self.longest)

    def __getitem__(self, k: int) -> dict[str, Any]:
        groups: dict[tuple[int, int], tuple[list[int], list[np.ndarray]]] = {}
        failed: list[tuple[int, str]] = []
        for image in (int(i) for i in self.items[k]):
            try:
                pixels = self.load(image)
            except ImageLoadError as exc:
                failed.append((image, str(exc)))
                continue
            except Exception as exc:  # a decoder bug must not stop a long run either
                failed.append((image, f"cannot decode ({type(exc).__name__}: {exc})"))
                continue
            ids, arrays = groups.setdefault(tuple(pixels.shape[1:]), ([], []))
            ids.append(image)
            arrays.append(pixels)
        return {"ids": [torch.tensor(ids, dtype=torch.long) for ids, _ in groups.values()],
                "images": [torch.from_numpy(np.stack(arrays)) for _, arrays in groups.values()],
                "failed": failed}


def image_loader(dataset: ImageGroupsDataset, workers: int, device: torch.device,
                 prefetch: int = 2) -> DataLoader:
    """A DataLoader over ``dataset`` (one item per iteration, in order): ``workers`` decoding
    processes that die with this one, ``prefetch`` items ahead per worker, pinned memory on CUDA."""
    workers = workers if len(dataset) > 1 else 0
    # its own generator: creating a loader must not draw from torch's global generator, or a run
    # resumed mid-epoch (one loader fewer) would continue with other dropout draws
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      generator=torch.Generator().manual_seed(0),
                      collate_fn=None, pin_memory=device.type == "cuda",
                      worker_init_fn=WorkerInit() if workers else None,
                      prefetch_factor=prefetch if workers else None)


def as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 batch as float in [0, 1] on ``device`` (copied asynchronously from pinned memory)."""
    return images.to(device, non_blocking=True).float().div_(255.0)
