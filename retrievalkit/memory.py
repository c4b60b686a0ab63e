"""Keep freed memory in the process while a job allocates the same large blocks over and over.

Why. A CNN forward pass on CPU allocates every activation anew and frees it a layer later. glibc
serves each block larger than its mmap threshold (128 KB at first, raised dynamically up to
32 MB) with a fresh ``mmap``, which the kernel zero-fills page by page on first touch (a minor
page fault every 4 KB) and gives back with ``munmap`` when freed; freed heap memory above the
trim threshold is returned to the kernel too. At 1024 px an EfficientNet-Lite0 activation is
32 MB for one image and 0.5 GB for a batch of 16, so every layer of every batch paid millions of
page faults: extraction spent more system time than compute (measured: 3.8 M minor faults and
6 s system time for 16 images at batch 1; 0.08 M and 0.1 s with the settings below, 1.5x faster;
see docs/extraction.md).

What. :func:`reuse_freed_memory` sets, for the time of the block, ``M_MMAP_MAX = 0`` (large
blocks come from the heap, whose freed memory malloc reuses without new page faults) and a high
``M_TRIM_THRESHOLD`` (freed memory stays in the process), then restores glibc's defaults and
calls ``malloc_trim(0)`` so the memory is handed back afterwards. The peak is what the largest
batch needs (bounded by the extraction's pixel budget), not more. On other C libraries (musl,
macOS, Windows) it does nothing. It is process-wide: decoding workers forked inside the block
inherit it, harmlessly.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's documented defaults
_DEFAULT_MMAP_MAX = 65536
_KEEP = 1 << 30  # trim threshold while the block runs: keep up to 1 GiB of freed heap

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Inside the block, large freed blocks are reused instead of unmapped; yields whether it applies.

    Nested and concurrent uses are counted: the defaults come back when the outermost ends.
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
