"""The plain settings of a model and of a training run, light to import.

:class:`ModelConfig` (what a model is made of) and :class:`TrainConfig` (every option of a
training run) hold only names and numbers. They live here, apart from the torch code that uses
them (:mod:`retrievalkit.model`, :mod:`retrievalkit.train`, which re-export them), so the
command line can show their defaults in ``--help`` without importing torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import RkitError


@dataclasses.dataclass
class ModelConfig:
    """What a model is made of, as the user wrote it (``NAME[:KEY=VALUE...]``)."""

    backbone: str = "efficientnet-lite0"
    pooling: str = "gem"
    weights: str = "imagenet"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run (``rkit train`` flags map one to one).

    Component options use the ``NAME[:KEY=VALUE...]`` syntax (``m3:t_i=0.3``).
    """

    run_dir: str = "runs/train"
    #: ``rkit sfm`` output / database folder, or a retrieval-SfM ``db.pkl``; ``None``: the
    #: embedded synthetic set (generated and reconstructed once, then cached).
    data: str | None = None
    #: Image folder for a ``db.pkl`` (its image names are relative to it).
    images_root: str | None = None
    #: Folder-per-class validation images (mAP after every epoch), or ``None``.
    val: str | None = None
    backbone: str = "efficientnet-lite0"
    pooling: str = "mac"
    weights: str = "imagenet"
    miner: str = "m3"
    negatives: str = "n2"
    num_negatives: int = 5
    loss: str = "contrastive"
    epochs: int = 5
    #: Queries drawn per epoch; 0 = every image that has a positive.
    queries_per_epoch: int = 20
    #: Candidate negatives drawn per epoch; 0 = every image.
    pool_size: int = 0
    tuples_per_batch: int = 5
    optimizer: str = "adam"
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 1e-6
    #: Learning-rate decay per epoch: lr_e = lr * exp(-lr_decay * e) (the authors' public code
    #: uses exp(-0.01) per epoch); 0 keeps the rate constant.
    lr_decay: float = 0.01
    #: Longest image side (pixels) for training and mining.
    image_size: int = 362
    freeze_bn: bool = True
    #: Whitening learned after training on the training pairs (``none``, ``learned``, ``pca``).
    whiten: str = "learned"
    whiten_dim: int | None = None
    device: str = "auto"
    #: ``auto`` (bf16 autocast on a CUDA GPU that has it, else fp32), ``fp32``, ``bf16``, ``fp16``.
    precision: str = "auto"
    seed: int = 0
    #: Image-decoding worker processes (training steps and mining extraction); 0 = decode in
    #: the training process.
    num_workers: int = 2
    #: Batch size of the mining extraction.
    extract_batch_size: int = 8
    #: CPU threads for torch per process (0: the CPUs this process may use, less one per worker;
    #: see :func:`retrievalkit.device.compute_threads`).
    threads: int = 0
    #: Checkpoint inside an epoch every this many seconds (``600``, ``10m``) or tuples (``200t``);
    #: ``0``: only at the end of each epoch.
    checkpoint_every: str = "10m"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RkitError(f"unknown training option(s) {', '.join(unknown)} in the configuration; "
                            f"the options are: {', '.join(sorted(known))}")
        return cls(**values)
