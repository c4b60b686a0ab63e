"""Choosing the torch device, the numeric precision and the CPU thread count.

``auto`` device: CUDA, then Apple MPS, then the CPU. ``auto`` precision: bfloat16 autocast on a
CUDA GPU that supports it, float32 everywhere else (see :func:`resolve_precision`).

Threads. torch's default is one thread per *online* core, whatever the process may really use:
in a container limited to 2 CPUs on a 64-core host, or beside other busy jobs, its threads wait
for each other at every operator and a run can slow down 10-50x. :func:`usable_cpus` reads what
this process may use (CPU affinity, the cgroup ``cpu.max`` quota of a scheduler or container,
and ``OMP_NUM_THREADS`` when the user set it) and :func:`compute_threads` leaves one core to
each data-loading worker process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import RkitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RkitError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RkitError(f"device {name!r} asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision name`` on ``device``; ``None`` means float32.

    ``auto``: bfloat16 on a CUDA GPU with bfloat16 support (Ampere and newer), else float32.
    ``fp16`` needs a gradient scaler (the trainer adds one). Reduced precision is a CUDA
    feature here: on the CPU it is refused, since CPU autocast is slower than float32 there.
    """
    if name not in PRECISIONS:
        raise RkitError(f"--precision {name!r}: use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if device.type != "cuda":
        if name == "auto":
            return None
        raise RkitError(f"--precision {name} needs a CUDA GPU (the device is {device}); use --precision fp32 "
                        f"or auto on {device.type}")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        raise RkitError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16 or fp32")
    return torch.bfloat16 if name == "bf16" else torch.float16


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """How many CPUs this process may really run on: the smallest of its CPU affinity, the
    cgroup quota (rounded up) and ``OMP_NUM_THREADS`` when set; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        count = min(count, int(omp))
    return max(1, count)


def compute_threads(requested: int = 0, workers: int = 0, processes_per_machine: int = 1) -> int:
    """torch threads for a process: ``requested`` if > 0, else the usable CPUs shared among the
    ``processes_per_machine`` ranks of a machine, less one per data-loading worker; at least 1."""
    if requested > 0:
        return requested
    share = usable_cpus() // max(1, processes_per_machine)
    return max(1, share - max(0, workers))


def configure_threads(requested: int = 0, workers: int = 0, processes_per_machine: int = 1) -> int:
    """Set torch's intra-op thread count (:func:`compute_threads`) and return it."""
    threads = compute_threads(requested, workers, processes_per_machine)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

