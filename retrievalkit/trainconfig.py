"""A training run's directory: its file names, and reading and checking the saved options
(no torch import; the options themselves are :class:`retrievalkit.settings.TrainConfig`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RkitError
from .settings import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
MODEL_DIR = "model"
#: Options that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("run_dir", "epochs", "device", "num_workers", "progress", "threads", "precision", "checkpoint_every")


def _check_resume(saved: dict[str, Any], config: TrainConfig) -> None:
    defaults = TrainConfig().to_dict()   # options added after the run was started keep their default
    changed = [key for key, value in config.to_dict().items()
               if key not in RESUMABLE_CHANGES and saved.get(key, defaults[key]) != value]
    if changed:
        listing = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise RkitError(f"--resume continues the run saved in {config.run_dir}, but these options differ "
                        f"from it: {listing}. Drop them (the saved configuration is used), or start a new "
                        f"run in another --run-dir.")


def read_saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The options a run in ``run_dir`` was started with (``config.json``)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RkitError(f"{run_dir} holds no training run to resume (no {CONFIG_NAME}); start one without --resume")
    try:
        return dict(json.loads(path.read_text())["options"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RkitError(f"{path} is damaged ({type(exc).__name__}: {exc}): the run cannot be resumed; "
                        f"start a new one in another --run-dir") from exc
