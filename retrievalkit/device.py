"""Choosing the torch device: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from .errors import RkitError


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
