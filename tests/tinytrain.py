"""A tiny training setup shared by the trainer tests, and a script that runs it in a process.

3 "places" x 4 views of 48x64 px generated pictures, a two-layer random-weight backbone
(``tiny-cnn``) and a contrastive loss that can signal its own process after a number of calls
(``signal-contrastive``; environment ``RKIT_TEST_SIGNAL=KILL:7`` or ``TERM:7``), registered as
a plugin host in code: no pycolmap, no pretrained weights.

As a script (plain ``python tests/tinytrain.py`` or under ``torchrun``)::

    python tests/tinytrain.py DB_DIR RUN_DIR [--resume] [--option KEY=VALUE ...]

builds the database in DB_DIR (if absent), trains with :func:`config` plus the options, and
exits 0, 130 when interrupted, or 2 with the error message.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.plugins import PluginHost
from retrievalkit.train import TrainConfig
from retrievalkit.trainingdb import TrainingDatabase


class TinyBackbone(nn.Module):
    """conv-BN-ReLU-conv: 16 channels at 1/4 resolution."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    out_channels = 16

    def __init__(self, weights: str = "none") -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 16, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class NaNAfter(nn.Module):
    """A loss that is the contrastive loss for ``calls`` calls, then NaN."""

    def __init__(self, calls: int = 3) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, embeddings: torch.Tensor, tuples: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        value = (embeddings[tuples[:, 0]] - embeddings[tuples[:, 1]]).pow(2).sum()
        return value if self.seen <= self.calls else value * float("nan")


class SignalContrastive(nn.Module):
    """The contrastive loss; with ``RKIT_TEST_SIGNAL=NAME:N`` it sends itself SIGNAME at call N."""

    def __init__(self) -> None:
        super().__init__()
        from retrievalkit_builtins.losses.contrastive import ContrastiveLoss

        self.loss = ContrastiveLoss()
        name, _, count = os.environ.get("RKIT_TEST_SIGNAL", ":0").partition(":")
        self.signal, self.at, self.seen = name, int(count or 0), 0

    def forward(self, embeddings: torch.Tensor, tuples: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        if self.signal and self.seen == self.at:
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))
        return self.loss(embeddings, tuples)


class TinyPlugin:
    @hookimpl
    def rkit_backbones(self) -> list[Component]:
        return [Component("tiny-cnn", TinyBackbone, "test backbone")]

    @hookimpl
    def rkit_losses(self) -> list[Component]:
        return [Component("nan-after", NaNAfter, "test loss that turns NaN"),
                Component("signal-contrastive", SignalContrastive, "test loss that signals its process")]


def make_host() -> PluginHost:
    host = PluginHost()
    host.register(TinyPlugin(), name="test-train-plugin")
    return host


def make_database(root: Path) -> TrainingDatabase:
    """3 places x 4 views; views of a place see overlapping ranges of that place's points."""
    rng = np.random.default_rng(0)
    images, clusters, points, depths = [], [], [], []
    for place in range(3):
        base = rng.integers(0, 255, size=(3, 12, 16)).astype(np.uint8)
        for view in range(4):
            shifted = np.roll(base, view, axis=2).transpose(1, 2, 0)
            picture = Image.fromarray(shifted).resize((64, 48), Image.Resampling.NEAREST)
            name = f"place{place}/view{view}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            picture.save(root / name)
            images.append(name)
            clusters.append(place)
            ids = np.arange(100 * place + 5 * view, 100 * place + 5 * view + 20)
            points.append(ids)
            depths.append(np.full(len(ids), 10.0 + view))
    return TrainingDatabase(images=images, clusters=clusters, point_ids=points, point_depths=depths,
                            focals=np.full(12, 60.0), root=root)


def config(run_dir: Path, **overrides) -> TrainConfig:
    values = dict(run_dir=str(run_dir), backbone="tiny-cnn", pooling="mac", weights="none", miner="m2",
                  negatives="n2", num_negatives=2, epochs=1, queries_per_epoch=6, tuples_per_batch=2,
                  lr=1e-3, image_size=64, whiten="learned", whiten_dim=4, device="cpu", seed=3,
                  progress=False, num_workers=0)
    values.update(overrides)
    return TrainConfig(**values)


def _parse(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv: list[str]) -> int:
    from retrievalkit.errors import RkitError
    from retrievalkit.train import train
    from retrievalkit.trainingdb import load_database

    db_dir, run_dir = Path(argv[0]), Path(argv[1])
    resume = "--resume" in argv
    options = dict(a.split("=", 1) for a in argv[2:] if "=" in a)
    if not (db_dir / "trainingdb.json").exists():
        make_database(db_dir / "images").save(db_dir)
    db = load_database(db_dir)
    try:
        train(config(run_dir, **{k: _parse(v) for k, v in options.items()}), resume=resume, database=db,
              host=make_host(), log=lambda m: print(m, file=sys.stderr, flush=True))
    except RkitError as exc:
        exit_code = getattr(exc, "exit_code", 2)
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return exit_code
    except KeyboardInterrupt as exc:
        print(f"Interrupted: {exc}", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
