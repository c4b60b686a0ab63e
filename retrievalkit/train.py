"""Fine-tuning a retrieval model on tuples mined from an SfM training database.

Radenović, Tolias, Chum, ECCV 2016 (sec. 3 and 4; docs/definitions.md §3 and §4): a siamese
network (one set of weights for every branch) is trained on tuples ``(q, p, n_1 .. n_N)`` with a
loss such as the contrastive loss (eq. 2). Every epoch the trainer

1. draws ``queries_per_epoch`` queries among the images that have a co-observing image, and a
   random pool of candidate negatives (``pool_size``; all images by default);
2. if a miner ranks by descriptor (m1, N1, N2), computes the descriptors of the queries, their
   co-observing images and the pool with the *current* network (:meth:`Trainer.describe`:
   shape-grouped batches decoded by DataLoader workers, split over the ranks and gathered),
   keeping the decoded pixels for step 4 (:class:`retrievalkit.tupledata.PixelCache`);
3. mines one positive and N negatives per query (:meth:`Trainer.mine_tuples`, the one place
   tuples are made; searches through :mod:`retrievalkit.index`), dropping queries without one;
4. trains on the tuples, ``tuples_per_batch`` per optimizer step: the step's images decoded by
   DataLoader workers (:mod:`retrievalkit.tupledata`), each group of one resized shape through
   the network in one forward pass, the loss plugin on each tuple, gradients summed over the
   step (all-reduced by DistributedDataParallel under torchrun, :mod:`retrievalkit.ranks`),
   optionally under CUDA autocast (``precision``); batch-norm statistics frozen by default;
5. decays the learning rate (``lr_decay``: lr x exp(-lr_decay) per epoch, as the authors'
   public code).

After the last epoch the chosen whitening is learned on the training database (descriptors of
every image with the final network; matching pairs = the positive miner's (q, p) for every
query, non-matching = the negative miner's (q, n)) and stored in the model
(``run_dir/model``, loadable with :func:`retrievalkit.model.load_model`).

The run directory holds ``config.json`` (every option, resolved), ``metrics.jsonl`` (one line
per epoch), ``checkpoint.pt`` (:mod:`retrievalkit.trainstate`: written atomically after every
epoch and every ``checkpoint_every`` inside one), ``model/`` and ``summary.json``.
``resume=True`` continues from the checkpoint, also from inside an epoch and on another number
of processes, and gives the same weights and metrics as an uninterrupted run with the same
seed: all randomness comes from one ``numpy`` generator and torch's generators, all saved.
Ctrl-C and SIGTERM finish the current step, write a checkpoint and raise
:class:`retrievalkit.errors.Interrupted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .atomic import write_text_atomic
from .components import ComponentSpec
from .device import resolve_device
from .errors import Interrupted, RkitError
from .memory import reuse_freed_memory
from .mining import DescriptorRows, NegativeMiner, PositiveMiner, check_enough_negatives
from .model import ModelConfig, RetrievalModel, build_model
from .plugins import PluginHost, get_host
from . import ranks as ranks_module
from .ranks import Ranks
from .settings import TrainConfig  # re-exported: defined with the other light settings
from .trainingdb import TrainingDatabase
from .trainstate import CheckpointEvery, StopRequests, load_checkpoint, save_checkpoint
from .trainconfig import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, MODEL_DIR, RESUMABLE_CHANGES, SUMMARY_NAME,
                          _check_resume, read_saved_config)
from .tupledata import ImageGroupsDataset, PixelCache, as_input, image_loader
from .tuples import assemble_tuples, safe_sqrt, tuple_squared_distances

@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    model_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


# -- training data ---------------------------------------------------------------------------

def subset_database(db: TrainingDatabase, keep: Sequence[int] | np.ndarray) -> TrainingDatabase:
    """A database with only the images ``keep`` (e.g. the training landmarks of a split).

    The pair-statistics cache is carried over (renumbered), so the subset's pair quantities
    are read from it instead of being recomputed pair by pair.
    """
    keep = np.asarray(keep, dtype=np.int64)

    def pick(items: Sequence[Any]) -> list[Any]:
        return [items[int(i)] for i in keep]

    return TrainingDatabase(
        images=pick(db.images), clusters=db.clusters[keep],
        point_ids=None if db.point_ids is None else pick(db.point_ids),
        point_depths=None if db.point_depths is None else pick(db.point_depths),
        centres=None if db.centres is None else np.asarray(db.centres)[keep],
        focals=None if db.focals is None else np.asarray(db.focals)[keep],
        root=db.root, meta={**db.meta, "subset_of": len(db)},
        pair_cache=None if db.pair_cache is None else db.pair_cache.subset(keep, len(db)),
    )


def synthetic_database(cache_dir: Path, progress: bool = True,
                       log: Callable[[str], None] = print) -> TrainingDatabase:
    """The embedded synthetic set reconstructed with SfM, cached in ``cache_dir/synthetic-sfm``.

    The images are generated (once) where :func:`retrievalkit.synth.default_synthetic_dir` says,
    the folder every command uses for the synthetic set; the SfM database is built once and
    reused on later runs.
    """
    from .sfm import SfmOptions, run_sfm
    from .synth import default_synthetic_dir, generate_synthetic
    from .trainingdb import load_database

    sfm_dir = cache_dir / "synthetic-sfm"
    try:
        return load_database(sfm_dir)
    except RkitError:
        pass
    images_dir = default_synthetic_dir()
    log(f"no --data given: generating the synthetic set in {images_dir} and reconstructing it with SfM "
        f"into {sfm_dir} (once; later runs reuse it)")
    generated = Path(generate_synthetic(images_dir, progress=progress))
    result = run_sfm(generated / "images", sfm_dir, SfmOptions(device="cpu"), progress=progress, log=log)
    return result.database


def load_training_data(config: TrainConfig, log: Callable[[str], None] = print) -> TrainingDatabase:
    """The training database named by ``config.data`` (or the cached synthetic set)."""
    from .trainingdb import load_database

    if config.data is None:
        from .cache import cache_dir

        return synthetic_database(cache_dir(), config.progress, log)
    path = Path(config.data)
    if path.suffix == ".pkl":
        from .dbpkl import import_dbpkl

        if config.images_root is None:
            raise RkitError(f"{path} is a db.pkl: give the folder of its images with --images-root")
        return import_dbpkl(path, config.images_root)
    return load_database(path)


# -- checks before any work -----------------------------------------------------------------

def query_candidates(db: TrainingDatabase) -> np.ndarray:
    """Images with at least one co-observing image (the only ones that can be queries)."""
    return np.asarray([q for q in range(len(db)) if len(db.co_observing(q))], dtype=np.int64)


def check_training_setup(db: TrainingDatabase, config: TrainConfig, candidates: np.ndarray) -> None:
    """Raise a clear :class:`RkitError` when the database cannot give the requested tuples."""
    if db.num_clusters < 2:
        raise RkitError(f"the training database has {db.num_clusters} 3D model(s); negatives come from "
                        f"other models, so at least 2 are needed. Reconstruct more places with `rkit sfm`.")
    if len(candidates) == 0:
        raise RkitError("no image of the training database shares 3D points with another image, so no "
                        "query has a positive; check the `rkit sfm` output (`rkit sfm --stats DIR`).")
    if config.queries_per_epoch < 0 or config.queries_per_epoch > len(candidates):
        raise RkitError(f"--queries {config.queries_per_epoch} asked for, but only {len(candidates)} images "
                        f"of the database have a positive: use --queries {len(candidates)} or fewer (0 = all)")
    if config.num_negatives < 1:
        raise RkitError(f"--num-negatives must be at least 1, got {config.num_negatives}")
    if config.tuples_per_batch < 1 or config.epochs < 0 or config.image_size < 32:
        raise RkitError("--tuples-per-batch must be >= 1, --epochs >= 0 and --image-size >= 32")
    largest = int(np.bincount(db.clusters - db.clusters.min()).max())
    if config.pool_size:
        if config.pool_size < config.num_negatives + largest:
            raise RkitError(f"--pool-size {config.pool_size} cannot guarantee {config.num_negatives} negatives "
                            f"outside a query's model (the largest model has {largest} images): use "
                            f"--pool-size {config.num_negatives + largest} or more, or 0 for all images")
    check_enough_negatives(db, candidates, np.arange(len(db)), config.num_negatives)
    if config.optimizer not in ("adam", "sgd"):
        raise RkitError(f"--optimizer {config.optimizer!r}: use adam or sgd")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise RkitError(f"--lr must be a positive number, got {config.lr}")


def build_training_components(config: TrainConfig, host: PluginHost) -> tuple[PositiveMiner, NegativeMiner, nn.Module]:
    """Build the miners and the loss, and check every component name of ``config``.

    Called before the training data is loaded or built, so a typo in a component name or option
    is reported at once rather than after minutes of SfM.
    """
    positive: PositiveMiner = host.build("miner", config.miner)
    negative: NegativeMiner = host.build("miner", config.negatives)
    for miner, spec, role, flag in ((positive, config.miner, "positive", "--miner"),
                                    (negative, config.negatives, "negative", "--negatives")):
        if getattr(miner, "role", None) != role:
            fitting = [name for name in host.names("miner")
                       if getattr(host.build("miner", name), "role", None) == role]
            raise RkitError(f"{flag} needs a {role} miner, but {spec!r} is a {getattr(miner, 'role', '?')} "
                            f"miner; the {role} miners are: {', '.join(fitting)}")
    loss: nn.Module = host.build("loss", config.loss)
    for kind, spec in (("backbone", config.backbone), ("pooling", config.pooling), ("whitening", config.whiten)):
        host.get(kind, ComponentSpec.parse(spec).name)
    return positive, negative, loss


# -- images ----------------------------------------------------------------------------------

def set_batchnorm_frozen(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode (running statistics are used, not updated)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# -- the trainer -----------------------------------------------------------------------------

@dataclasses.dataclass
class EpochState:
    """An epoch in progress: its mined tuples, how many are trained, the running metric sums."""

    tuples: np.ndarray
    facts: dict[str, Any]
    position: int = 0
    #: summed over trained tuples: loss, positive distance, mean negative distance; and their count
    sums: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    mining_s: float = 0.0
    training_s: float = 0.0

    def to_state(self) -> dict[str, Any]:
        return {"tuples": torch.from_numpy(np.asarray(self.tuples, dtype=np.int64)),
                "epoch_json": json.dumps({"facts": self.facts, "position": self.position, "sums": self.sums,
                                          "mining_s": self.mining_s, "training_s": self.training_s})}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochState:
        values = json.loads(state["epoch_json"])
        return cls(tuples=state["tuples"].cpu().numpy().astype(np.int64), **values)


class Trainer:
    """One training run (on this rank); :func:`train` is the usual entry point."""

    def __init__(self, config: TrainConfig, db: TrainingDatabase, *, host: PluginHost | None = None,
                 log: Callable[[str], None] = print, ranks: Ranks | None = None) -> None:
        from .device import configure_threads, resolve_precision

        self.config, self.db = config, db
        self.ranks = ranks or Ranks(device=resolve_device(config.device))
        self.device = self.ranks.device
        self.log = log if self.ranks.is_main else (lambda _message: None)
        self.threads = configure_threads(config.threads, config.num_workers,
                                         self.ranks.local_world if self.device.type == "cpu" else 1)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.checkpoint_every = CheckpointEvery.parse(config.checkpoint_every)
        self.host = host or get_host()
        self.run_dir = Path(config.run_dir)
        self.positive_miner, self.negative_miner, self.loss_fn = build_training_components(config, self.host)
        for miner, spec in ((self.positive_miner, config.miner), (self.negative_miner, config.negatives)):
            if getattr(miner, "needs_points", False):
                db.require_points(f"the {spec} miner")
        self.candidates = query_candidates(db)
        check_training_setup(db, config, self.candidates)
        torch.manual_seed(config.seed)   # random initial weights (weights=none) repeat too
        self.model: RetrievalModel = build_model(ModelConfig(config.backbone, config.pooling, config.weights),
                                                 self.host).to(self.device)
        torch.manual_seed(config.seed)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=math.exp(-config.lr_decay))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        self.bad_images: dict[int, str] = {}
        self.shapes = np.full((len(db), 2), -1, dtype=np.int64)
        self.paths = [db.image_path(i) for i in range(len(db))]
        self.epoch_state: EpochState | None = None
        self.net: nn.Module = self.model
        self.stops = StopRequests()
        self.stop_agreed = False
        self.last_save = time.monotonic()
        self.saved_where = "none yet"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (after the ranks pooled the unreadable images they found)."""
        self.share_bad_images()
        if not self.ranks.is_main:
            return
        state = {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "numpy_rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 "metrics": json.dumps(self.metrics), "bad_images": json.dumps(self.bad_images),
                 "world_size": self.ranks.world}
        if self.epoch_state is not None:
            state.update(self.epoch_state.to_state())
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)
        self.last_save = time.monotonic()
        self.saved_where = self.position_text()

    def position_text(self) -> str:
        """Where the run stands: ``after epoch E`` or ``epoch E, P of T tuples``."""
        state = self.epoch_state
        if state is not None and state.position:
            return f"epoch {self.epoch + 1}, {state.position} of {len(state.tuples)} tuples"
        return f"after epoch {self.epoch}"

    def load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT_NAME
        state = load_checkpoint(path, self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
                self.scaler.load_state_dict(state["scaler"])
            self.rng.bit_generator.state = json.loads(state["numpy_rng"])
            torch.set_rng_state(state["torch_rng"].cpu())
            cuda_states = [s.cpu() for s in state.get("cuda_rng", [])]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
            self.epoch = int(state["epoch"])
            self.metrics = json.loads(state["metrics"])
            self.bad_images = {int(k): v for k, v in json.loads(state["bad_images"]).items()}
            self.epoch_state = EpochState.from_state(state) if "tuples" in state else None
            self.saved_where = self.position_text()
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RkitError(f"{path} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
                            f"it was written for other options or is damaged; start a new run in another "
                            f"--run-dir") from None

    def write_metrics(self) -> None:
        if self.ranks.is_main:
            write_text_atomic(self.run_dir / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in self.metrics))

    def share_bad_images(self) -> None:
        """Pool the unreadable images every rank found, so all ranks mine the same way."""
        for found in self.ranks.gather(self.bad_images):
            for index, reason in found.items():
                self.bad_images.setdefault(int(index), reason)

    def note_bad_image(self, index: int, reason: str) -> None:
        if index not in self.bad_images:
            self.bad_images[index] = reason
            self.log(f"skipping unreadable training image {self.db.images[index]} and its tuples: {reason}")

    # -- descriptors for mining ------------------------------------------------------------
    def usable(self, indices: np.ndarray) -> np.ndarray:
        if not self.bad_images:
            return indices
        return indices[~np.isin(indices, list(self.bad_images))]

    def image_shapes(self, indices: np.ndarray) -> np.ndarray:
        """Resized (height, width) of each image (headers read once per run; bad ones noted)."""
        from .images import ImageLoadError, image_size, resized_shape

        for index in indices[self.shapes[indices, 0] < 0]:
            try:
                width, height = image_size(self.paths[int(index)])
            except ImageLoadError as exc:
                self.note_bad_image(int(index), str(exc))
                continue
            self.shapes[index] = resized_shape(width, height, self.config.image_size)
        return self.shapes[indices]

    def describe(self, indices: np.ndarray, cache: PixelCache | None = None,
                 label: str | None = None) -> DescriptorRows:
        """Pooled descriptors of ``indices`` with the current network, the work split over the
        ranks and gathered; ``cache`` keeps the decoded pixels for the epoch's training steps;
        ``label`` names the progress bar (default: this epoch's mining)."""
        from .extract import group_batches

        indices = np.asarray(indices, dtype=np.int64)
        shapes = self.image_shapes(indices)
        readable = indices[shapes[:, 0] > 0]
        batches = group_batches([tuple(s) for s in self.shapes[readable]], self.config.extract_batch_size)
        mine = [readable[b] for b in batches[self.ranks.rank::self.ranks.world]]
        parts = self.ranks.gather(self.embed_batches(mine, cache, label))
        for index, reason in (failure for _, _, failed in parts for failure in failed):
            self.note_bad_image(int(index), reason)
        return DescriptorRows(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                              len(self.db))

    def embed_batches(self, batches: list[np.ndarray], cache: PixelCache | None, label: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        from tqdm import tqdm

        dim = int(self.model.backbone.out_channels)
        ids, vectors, failed = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)], []
        loader = image_loader(ImageGroupsDataset(self.paths, batches, self.config.image_size),
                              self.config.num_workers, self.device)
        bar = tqdm(total=sum(len(b) for b in batches), desc=label or f"epoch {self.epoch + 1} mining", unit="img",
                   disable=not (self.config.progress and self.ranks.is_main))
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast(), reuse_freed_memory():
            for item in loader:
                failed += item["failed"]
                for group_ids, images in zip(item["ids"], item["images"]):
                    vectors.append(self.model.pooled(as_input(images, self.device)).float().cpu().numpy())
                    ids.append(group_ids.numpy())
                    if cache is not None:
                        cache.add(group_ids.tolist(), images)
                bar.update(sum(len(i) for i in item["ids"]) + len(item["failed"]))
        bar.close()
        self.model.train(was_training)
        return np.concatenate(ids), np.concatenate(vectors), failed

    # -- mining: the one place tuples are made ---------------------------------------------
    def needs_descriptors(self) -> bool:
        return bool(self.positive_miner.needs_descriptors or self.negative_miner.needs_descriptors)

    def mining_descriptors(self, queries: np.ndarray, pool: np.ndarray,
                           cache: PixelCache | None = None) -> DescriptorRows | None:
        """Descriptors of what the miners rank: the queries, the pool and (m1) each M(q)."""
        if not self.needs_descriptors():
            return None
        needed = [queries, pool]
        if self.positive_miner.needs_descriptors:
            needed += [self.db.co_observing(int(q)) for q in queries]
        return self.describe(np.unique(np.concatenate(needed).astype(np.int64)), cache)

    def mine_tuples(self, queries: np.ndarray, pool: np.ndarray,
                    descriptors: DescriptorRows | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Database-index tuples ``(T, 2 + N)`` for ``queries`` against ``pool``, and facts."""
        queries, pool = self.usable(queries), self.usable(pool)
        positives = self.positive_miner.mine(queries, self.db, descriptors, self.rng)
        negatives = self.negative_miner.mine(queries, self.db, descriptors, self.config.num_negatives,
                                             self.rng, pool=pool)
        tuples = assemble_tuples(queries, positives, negatives)
        if self.bad_images:
            tuples = tuples[~np.isin(tuples, list(self.bad_images)).any(axis=1)]
        facts = {"queries": int(len(queries)), "tuples": int(len(tuples)),
                 "queries_without_positive": int((positives < 0).sum())}
        if hasattr(self.negative_miner, "last_filled"):
            facts["queries_short_of_models"] = int(self.negative_miner.last_filled)
        return tuples, facts

    def start_epoch(self, cache: PixelCache) -> EpochState:
        """Draw the epoch's queries and pool, and mine its tuples (every rank the same)."""
        config = self.config
        started = time.perf_counter()
        candidates = self.usable(self.candidates)
        count = len(candidates) if config.queries_per_epoch == 0 else min(config.queries_per_epoch, len(candidates))
        queries = np.sort(self.rng.choice(candidates, size=count, replace=False))
        everything = self.usable(np.arange(len(self.db), dtype=np.int64))
        pool = everything if not config.pool_size else np.sort(
            self.rng.choice(everything, size=min(config.pool_size, len(everything)), replace=False))
        descriptors = self.mining_descriptors(queries, pool, cache)
        tuples, facts = self.mine_tuples(queries, pool, descriptors)
        if len(tuples) == 0:
            raise RkitError(f"epoch {self.epoch + 1}: no query got a positive from {config.miner!r} "
                            f"(e.g. m3's t_i/t_s too strict for this database); loosen its options or use m2")
        return EpochState(tuples=tuples, facts=facts, mining_s=time.perf_counter() - started)

    # -- training steps --------------------------------------------------------------------
    def step_rows(self, state: EpochState) -> list[tuple[int, np.ndarray]]:
        """(start, this rank's tuples) of every step left in the epoch; a step is
        ``tuples_per_batch`` consecutive tuples dealt round-robin over the ranks."""
        size = self.config.tuples_per_batch
        return [(start, state.tuples[start:start + size][self.ranks.share(min(size, len(state.tuples) - start))])
                for start in range(state.position, len(state.tuples), size)]

    def train_steps(self, state: EpochState, cache: PixelCache) -> None:
        from tqdm import tqdm

        steps = self.step_rows(state)
        items = [np.unique(rows) for _, rows in steps]
        loader = image_loader(ImageGroupsDataset(self.paths, items, self.config.image_size, cache),
                              self.config.num_workers, self.device)
        bar = tqdm(total=len(state.tuples), initial=state.position, desc=f"epoch {self.epoch + 1} train",
                   unit="tuple", disable=not (self.config.progress and self.ranks.is_main))
        self.net.train()
        if self.config.freeze_bn:
            set_batchnorm_frozen(self.model)
        started = time.perf_counter()
        for (start, rows), batch in zip(steps, loader):
            before = state.position
            save = self.train_step(rows, batch, state)
            state.position = min(start + self.config.tuples_per_batch, len(state.tuples))
            bar.update(state.position - before)
            if state.position == len(state.tuples):
                break   # the epoch's end checkpoint follows (and a requested stop after it)
            if save or self.stop_agreed:
                state.training_s += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
            if self.stop_agreed:
                raise KeyboardInterrupt("stop requested")
        state.training_s += time.perf_counter() - started
        bar.close()

    def train_step(self, rows: np.ndarray, batch: dict[str, Any], state: EpochState) -> bool:
        """One optimizer step on this rank's ``rows``; returns whether a checkpoint is due (the
        ranks agree on it, and on a requested stop: :attr:`stop_agreed`)."""
        for index, reason in batch["failed"]:
            self.note_bad_image(int(index), reason)
        if self.bad_images:
            rows = rows[~np.isin(rows, list(self.bad_images)).any(axis=1)]
        self.optimizer.zero_grad(set_to_none=True)
        with reuse_freed_memory():   # activations reuse freed heap; handed back after the step
            with self.autocast():
                embeddings, local = self.forward_groups(batch, rows)
            loss, sums = self.tuple_losses(embeddings, local)
            if loss.requires_grad:   # DDP averages gradients over ranks: x world = the global sum
                self.scaler.scale(loss * self.ranks.world).backward()
        position_after = min(state.position + self.config.tuples_per_batch, len(state.tuples))
        save = self.ranks.is_main and self.checkpoint_every.due(self.last_save, state.position, position_after)
        totals = self.ranks.all_sum(sums + [float(self.stops.requested is not None), float(save)])
        if not math.isfinite(totals[0]):
            raise RkitError(
                f"the loss became {totals[0]} in epoch {self.epoch + 1}; the run stopped and the last good "
                f"checkpoint ({self.saved_where}) is kept in {self.run_dir}. Lower --lr (now {self.config.lr}) "
                f"and resume with --resume, or start again.")
        if totals[3] > 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        state.sums = [a + b for a, b in zip(state.sums, totals[:4])]
        self.stop_agreed = totals[4] > 0
        return totals[5] > 0

    def forward_groups(self, batch: dict[str, Any], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the images ``rows`` use, one forward pass per shape group, and ``rows``
        as row indices into them. Under DDP the gradient all-reduce is armed by the last
        forward only (the others run under ``no_sync``); a rank without tuples runs a dummy."""
        needed = np.unique(rows)
        groups = [(ids[keep][chunk], images[keep][chunk]) for ids, images in zip(batch["ids"], batch["images"])
                  for keep in [torch.from_numpy(np.isin(ids.numpy(), needed))] if bool(keep.any())
                  for chunk in power_of_two_chunks(int(keep.sum()))]
        if not groups and self.ranks.distributed:
            groups = [(torch.zeros(0, dtype=torch.long), torch.zeros(1, 3, 64, 64, dtype=torch.uint8))]
        outputs, ids = [], []
        for number, (group_ids, images) in enumerate(groups):
            sync = number == len(groups) - 1 or not isinstance(self.net, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.net.no_sync():
                out = self.net(as_input(images, self.device)).float()
            outputs.append(out if len(group_ids) else out[:0])
            ids.append(group_ids)
        if not outputs:
            return torch.zeros(0, self.model.out_dim, device=self.device), torch.zeros(0, 2 + self.config.num_negatives,
                                                                                        dtype=torch.long)
        order = torch.cat(ids).numpy()
        position = np.empty(int(order.max(initial=-1)) + 1 if len(order) else 0, dtype=np.int64)
        position[order] = np.arange(len(order))
        return torch.cat(outputs), torch.from_numpy(position[rows] if len(rows) else np.zeros((0, 1), np.int64))

    def tuple_losses(self, embeddings: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """The loss summed over this rank's tuples (the loss plugin once per tuple) and the sums
        of the epoch metrics: loss, positive distance, mean negative distance, tuple count."""
        if len(local) == 0:
            return embeddings.sum() * 0.0 if embeddings.requires_grad else torch.zeros((), device=self.device), \
                [0.0, 0.0, 0.0, 0.0]
        local = local.to(embeddings.device)
        loss = torch.stack([self.loss_fn(embeddings, local[t:t + 1]) for t in range(len(local))]).sum()
        with torch.no_grad():
            pos, neg = tuple_squared_distances(embeddings.detach(), local)
            sums = [float(loss.detach()), float(safe_sqrt(pos).sum()), float(safe_sqrt(neg).mean(dim=1).sum()),
                    float(len(local))]
        return loss, sums

    # -- epochs ----------------------------------------------------------------------------
    def run_epoch(self) -> dict[str, Any]:
        cache = PixelCache(self.run_dir / f".pixels-rank{self.ranks.rank}.u8")
        try:
            if self.epoch_state is None:
                self.epoch_state = self.start_epoch(cache.open())
                cache.finish()
            self.stops.deferring = True
            self.train_steps(self.epoch_state, cache)
        finally:
            self.stops.deferring = False
            cache.remove()
        state, self.epoch_state = self.epoch_state, None
        self.epoch += 1
        self.scheduler.step()
        used = max(state.sums[3], 1.0)
        record: dict[str, Any] = {
            "epoch": self.epoch, "loss": state.sums[0] / used, "mean_positive_distance": state.sums[1] / used,
            "mean_negative_distance": state.sums[2] / used, "tuples_trained": int(state.sums[3]), **state.facts,
            "lr": self.optimizer.param_groups[0]["lr"], "mining_s": round(state.mining_s, 3),
            "training_s": round(state.training_s, 3),
            "tuples_per_s": round(state.sums[3] / max(state.training_s, 1e-9), 4)}
        return record

    def validation_map(self) -> float | None:
        if not self.config.val or not self.ranks.is_main:
            return None
        from .evaluate import evaluate_folder_collection, folder_labels
        from .extract import extract_descriptors, list_images

        root, paths = list_images(self.config.val)
        self.model.eval()
        with torch.no_grad():
            result = extract_descriptors(self.model, paths, root=root, image_size=self.config.image_size,
                                         batch_size=self.config.extract_batch_size, device=self.device,
                                         num_workers=self.config.num_workers, progress=self.config.progress)
        return float(evaluate_folder_collection(result.descriptors, folder_labels(result.paths)).map)

    # -- after training: whitening and the saved model ------------------------------------
    def fit_final_whitening(self) -> dict[str, Any]:
        """Learn the whitening on the training pairs (rank 0 fits; all ranks extract)."""
        from .whitening import WhiteningData, fit_whitening

        config = self.config
        self.model.set_whitening(None)
        if config.whiten == "none" and config.whiten_dim is None:
            return {"method": "none"}
        everything = self.usable(np.arange(len(self.db), dtype=np.int64))
        descriptors = self.describe(everything, label="whitening pairs")
        everything = self.usable(everything)
        if not self.ranks.is_main:
            return {}
        tuples, _ = self.mine_tuples(self.candidates, everything, descriptors if self.needs_descriptors() else None)
        row_of = np.full(len(self.db), -1, dtype=np.int64)   # database index -> row of the whitening data
        row_of[everything] = np.arange(len(everything))
        tuples = row_of[tuples]
        tuples = tuples[(tuples >= 0).all(axis=1)]
        positive_pairs = tuples[:, :2]
        negative_pairs = np.concatenate([np.stack([tuples[:, 0], tuples[:, j]], axis=1)
                                         for j in range(2, tuples.shape[1])]) if len(tuples) else None
        data = WhiteningData(descriptors[everything], positive_pairs, negative_pairs,
                             labels=self.db.clusters[everything])
        fitted = fit_whitening(config.whiten, data, config.whiten_dim)
        self.model.set_whitening(fitted.to_linear())
        fitted.save(self.run_dir / "whitening.npz")
        return {"method": fitted.method, "in_dim": fitted.in_dim, "out_dim": fitted.out_dim,
                "positive_pairs": int(len(positive_pairs)),
                "negative_pairs": 0 if negative_pairs is None else int(len(negative_pairs))}

    def wrap_for_ranks(self) -> None:
        """Under torchrun, the network that trains is a DistributedDataParallel of the model."""
        if self.ranks.distributed and not isinstance(self.net, DistributedDataParallel):
            # no buffer broadcast in forward: ranks run different numbers of forwards per step
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None, forward_sync_buffers=False)

    def log_epoch(self, record: dict[str, Any]) -> None:
        val = f", val mAP {record['val_map']:.4f}" if "val_map" in record else ""
        self.log(f"epoch {self.epoch}/{self.config.epochs}: loss {record['loss']:.4f}, "
                 f"d+ {record['mean_positive_distance']:.3f}, d- {record['mean_negative_distance']:.3f}, "
                 f"mining {record['mining_s']:.1f} s, training {record['training_s']:.1f} s "
                 f"({record['tuples_per_s']:.2f} tuples/s){val}")

    def train_epochs(self) -> None:
        self.wrap_for_ranks()
        while self.epoch < self.config.epochs:
            record = self.run_epoch()
            self.metrics.append(record)
            self.save_checkpoint()
            self.write_metrics()
            validated = time.perf_counter()
            val = self.validation_map()
            if val is not None:
                record.update(val_map=val, val_s=round(time.perf_counter() - validated, 3))
                self.write_metrics()
            self.ranks.barrier()
            self.log_epoch(record)
            if self.stop_agreed:
                raise KeyboardInterrupt("stop requested")

    def interrupted(self) -> Interrupted:
        resume = f"rkit train --run-dir {self.run_dir} --resume"
        return Interrupted(kept=f"the checkpoint ({self.saved_where}) in {self.run_dir}", resume=resume)

    def fit(self) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.stops:
            try:
                self.train_epochs()
            except KeyboardInterrupt:
                raise self.interrupted() from None
        whitening_started = time.perf_counter()
        whitening = self.fit_final_whitening()
        if not self.ranks.is_main:
            self.ranks.barrier()
            return TrainResult(self.run_dir, self.run_dir / MODEL_DIR, list(self.metrics), {})
        model_dir = self.model.save(self.run_dir / MODEL_DIR, extra={"training": {
            "run_dir": str(self.run_dir), "epochs": self.epoch, "miner": config.miner,
            "negatives": config.negatives, "loss": config.loss, "image_size": config.image_size,
            "whitening": whitening}})
        summary = {"epochs": self.epoch, "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
                   "whitening": whitening, "whitening_s": round(time.perf_counter() - whitening_started, 3),
                   "train_s_this_session": round(time.perf_counter() - started, 3),
                   "ranks": self.ranks.world, "torch_threads": self.threads,
                   "precision": str(self.amp_dtype or torch.float32).replace("torch.", ""),
                   "database": {"images": len(self.db), "models": self.db.num_clusters,
                                "query_candidates": int(len(self.candidates))},
                   "bad_images": {self.db.images[i]: r for i, r in self.bad_images.items()},
                   "model_dir": str(model_dir)}
        write_text_atomic(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        self.ranks.barrier()
        return TrainResult(self.run_dir, model_dir, list(self.metrics), summary)


def power_of_two_chunks(count: int, largest: int = 32) -> list[slice]:
    """Cut ``count`` items into chunks of 32, 16, ... 1 (13 -> 8 + 4 + 1).

    CPU convolution libraries (oneDNN) build and cache a kernel for every input shape, batch
    size included; arbitrary group sizes would make a new kernel for most steps (slow, and the
    cache grows all epoch). With power-of-two batches a few shapes serve a whole run.
    """
    chunks, start = [], 0
    while start < count:
        size = min(largest, 1 << ((count - start).bit_length() - 1))
        chunks.append(slice(start, start + size))
        start += size
    return chunks


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train(config: TrainConfig, *, resume: bool = False, database: TrainingDatabase | None = None,
          host: PluginHost | None = None, log: Callable[[str], None] = print,
          on_start: Callable[[], None] | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) the training described by ``config``.

    ``database`` overrides ``config.data`` (tests and scripts that build a database in code).
    Raises :class:`RkitError` for a setup that cannot work, before any training. ``on_start``
    is called once the setup is checked, just before the first epoch (the CLI writes its
    resolved configuration there). Under ``torchrun`` every process calls this; rank 0 alone
    writes files and logs (:mod:`retrievalkit.ranks`).
    """
    run_dir = Path(config.run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume:
        _check_resume(read_saved_config(run_dir), config)
    elif checkpoint.is_file():
        raise RkitError(f"{run_dir} already holds a training run: continue it with --resume, or choose "
                        f"another --run-dir")
    host = host or get_host()
    build_training_components(config, host)  # fail on a bad component before building any data
    CheckpointEvery.parse(config.checkpoint_every)
    ranks = ranks_module.start(config.device)
    try:
        db = database if database is not None else load_training_data(config, log)
        trainer = Trainer(config, db, host=host, log=log, ranks=ranks)
        _prepare_run_dir(trainer, resume, database is not None)
        if on_start is not None and ranks.is_main:
            on_start()
        return trainer.fit()
    finally:
        ranks.stop()


def _prepare_run_dir(trainer: Trainer, resume: bool, given_in_code: bool) -> None:
    """Write the run's ``config.json`` (rank 0), or load the checkpoint to resume from."""
    config, db, run_dir = trainer.config, trainer.db, trainer.run_dir
    checkpoint = run_dir / CHECKPOINT_NAME
    if trainer.ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        from . import __version__

        record = {"options": config.to_dict(), "retrievalkit": __version__,
                  "database": {"images": len(db), "models": db.num_clusters, "root": str(db.root),
                               "given_in_code": given_in_code}}
        if trainer.ranks.is_main:
            write_text_atomic(run_dir / CONFIG_NAME, json.dumps(record, indent=2) + "\n")
    elif not checkpoint.is_file():
        trainer.log(f"no checkpoint in {run_dir} yet: starting the run from epoch 1")
    else:
        trainer.load_checkpoint()
        if trainer.ranks.is_main:
            saved = json.loads((run_dir / CONFIG_NAME).read_text())
            saved["options"].update({key: getattr(config, key) for key in RESUMABLE_CHANGES})
            write_text_atomic(run_dir / CONFIG_NAME, json.dumps(saved, indent=2) + "\n")
        state = trainer.epoch_state
        where = (f"epoch {trainer.epoch + 1} at tuple {state.position} of {len(state.tuples)}" if state
                 else f"after epoch {trainer.epoch}")
        trainer.log(f"resuming {run_dir} {where} on {trainer.ranks.world} process(es)")
    trainer.ranks.barrier()
