"""The trainer's checkpoint file, when to write it, and stopping cleanly on Ctrl-C / SIGTERM.

A checkpoint (``RUN_DIR/checkpoint.pt``, written atomically by rank 0) holds everything that
decides what happens next: the weights, the optimizer, learning-rate scheduler and gradient
scaler states, the numpy, torch and CUDA generator states, the finished epochs' metrics, the
unreadable images found so far, and, inside an epoch, the epoch's mined tuples, how many of
them were trained and the running sums of the epoch's metrics. Resuming from it repeats the
uninterrupted run exactly (the tuples are global, so it may resume on another number of ranks).

It is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
crafted file cannot run code; a damaged or foreign file is a clear :class:`RkitError`.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from .atomic import atomic_path
from .errors import RkitError

#: Version of the checkpoint layout; 1 = end-of-epoch only (before in-epoch checkpoints).
CHECKPOINT_FORMAT = 2
#: Keys every checkpoint has.
REQUIRED_KEYS = ("epoch", "model", "optimizer", "numpy_rng", "torch_rng", "metrics", "bad_images")
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|t|tuples?)?\s*$")
_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class CheckpointEvery:
    """``--checkpoint-every``: ``600``/``600s``/``10m``/``1h`` (seconds) or ``200t`` (tuples);
    ``0``: only at the end of each epoch."""

    amount: float
    unit: str  # "seconds" or "tuples"

    @classmethod
    def parse(cls, text: str | float | int) -> CheckpointEvery:
        match = _EVERY.match(str(text))
        if not match:
            raise RkitError(f"--checkpoint-every {text!r}: write seconds (600, 600s, 10m, 1h) or a number "
                            f"of tuples (200t); 0 checkpoints only at the end of each epoch")
        amount, unit = float(match.group(1)), match.group(2)
        if unit and unit.startswith("t"):
            return cls(amount, "tuples")
        return cls(amount * _SECONDS[unit], "seconds")

    def due(self, last_save: float, position_before: int, position_after: int) -> bool:
        """Whether a checkpoint is due after a step that moved the epoch from
        ``position_before`` to ``position_after`` tuples (``last_save``: monotonic seconds)."""
        if self.amount <= 0:
            return False
        if self.unit == "tuples":
            return position_after // int(self.amount) > position_before // int(self.amount)
        return time.monotonic() - last_save >= self.amount


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (old file kept until the new one is complete)."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for anything else."""
    advice = (f"it was not used (nothing in it was run). Restore a good copy, or start a new run in "
              f"another --run-dir (or delete {path.name} to restart this run from epoch 1)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle refusing a global, a broken zip, a truncated file ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RkitError(f"{path} is not a readable rkit train checkpoint ({type(exc).__name__}: "
                        f"{reason[:200]}): {advice}") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise RkitError(f"{path} is not a complete rkit train checkpoint (missing {', '.join(missing)}): {advice}")
    if int(state.get("format", 1)) > CHECKPOINT_FORMAT:
        raise RkitError(f"{path} was written by a newer retrievalkit (checkpoint format {state['format']}); "
                        f"upgrade retrievalkit to resume it")
    return state


class StopRequests:
    """While active (a ``with`` block in the main thread), Ctrl-C and SIGTERM ask the training
    loop to stop at the next step boundary, where it saves a checkpoint first.

    Outside the steps (``deferring`` False: mining, validation) and on a second signal, they
    raise ``KeyboardInterrupt`` at once, as Python's default Ctrl-C does.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)

    def __init__(self) -> None:
        self.requested: int | None = None
        self.deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and self.requested is None:
            self.requested = signum
            return
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
