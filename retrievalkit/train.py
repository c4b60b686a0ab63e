"""Fine-tuning a retrieval model on tuples mined from an SfM training database.

Radenović, Tolias, Chum, ECCV 2016 (sec. 3 and 4; docs/definitions.md §3 and §4): a siamese network
(one set of weights for every branch) is trained on tuples ``(q, p, n_1 .. n_N)``. Every
epoch the trainer

1. draws ``queries_per_epoch`` queries among the images that have a co-observing image, and a
   random pool of candidate negatives (``pool_size``; all images by default);
2. if a miner ranks by descriptor (m1, N1, N2), extracts the descriptors of the queries, their
   co-observing images and the pool with the *current* network
   (:func:`retrievalkit.extract.extract_descriptors`, batched) and mines with one faiss search;
3. asks the positive miner for one positive per query and the negative miner for N negatives
   (:mod:`retrievalkit.mining`), drops queries without a positive, and
4. trains on the tuples: each image at ``image_size`` (longest side) through the network, the
   loss plugin on the tuple's descriptors, gradients summed over ``tuples_per_batch`` tuples
   per optimizer step. Batch-norm statistics are frozen by default (tiny batches of one image).

After the last epoch the chosen whitening is learned on the training database (descriptors of
every image with the final network; matching pairs = the positive miner's (q, p) for every
query, non-matching = the negative miner's (q, n)) and stored in the model
(``run_dir/model``, loadable with :func:`retrievalkit.model.load_model`).

The run directory holds ``config.json`` (every option, resolved), ``metrics.jsonl`` (one line
per epoch), ``checkpoint.pt`` (model, optimizer, random-generator states, epoch; written
atomically after every epoch), ``model/`` and ``summary.json``. ``resume=True`` continues from
the checkpoint and gives the same weights and metrics as an uninterrupted run with the same
seed: all randomness comes from one ``numpy`` generator and torch's generator, both saved.
"""

from __future__ import annotations

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

from .atomic import atomic_path, write_text_atomic
from .components import ComponentSpec
from .errors import RkitError
from .mining import NegativeMiner, PositiveMiner, check_enough_negatives
from .model import ModelConfig, RetrievalModel, build_model
from .plugins import PluginHost, get_host
from .settings import TrainConfig  # re-exported: defined with the other light settings
from .trainingdb import TrainingDatabase
from .tuples import assemble_tuples, safe_sqrt, tuple_squared_distances

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
MODEL_DIR = "model"
#: Options that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("epochs", "device", "num_workers", "progress", "threads")


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

def load_training_image(path: Path, image_size: int) -> torch.Tensor:
    """The image at ``path`` as a ``(3, H, W)`` float tensor in [0, 1], longest side ``image_size``.

    Uses the toolkit's image loader (:mod:`retrievalkit.images`), the same decoding and
    resizing as extraction; raises :class:`retrievalkit.images.ImageLoadError` for a bad file.
    """
    from .images import image_size as header_size
    from .images import load_rgb, resize_rgb, resized_shape, to_uint8_array

    width, height = header_size(path)
    shape = resized_shape(width, height, image_size)
    picture = resize_rgb(load_rgb(path, size_hint=(shape[1], shape[0])), shape)
    return torch.from_numpy(to_uint8_array(picture)).float().div_(255.0)


def set_batchnorm_frozen(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode (running statistics are used, not updated)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# -- the trainer -----------------------------------------------------------------------------

class Trainer:
    """One training run; :func:`train` is the usual entry point."""

    def __init__(self, config: TrainConfig, db: TrainingDatabase, *, host: PluginHost | None = None,
                 log: Callable[[str], None] = print) -> None:
        from .device import resolve_device

        self.config = config
        self.db = db
        self.log = log
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.host = host or get_host()
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        self.positive_miner, self.negative_miner, self.loss_fn = build_training_components(config, self.host)
        for miner, spec in ((self.positive_miner, config.miner), (self.negative_miner, config.negatives)):
            if getattr(miner, "needs_points", False):
                db.require_points(f"the {spec} miner")
        self.candidates = query_candidates(db)
        check_training_setup(db, config, self.candidates)
        self.model: RetrievalModel = build_model(ModelConfig(config.backbone, config.pooling, config.weights),
                                                 self.host).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr,
                                                                     weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        self.bad_images: dict[int, str] = {}

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "metrics": json.dumps(self.metrics),
            "bad_images": json.dumps(self.bad_images),
        }
        path = self.run_dir / CHECKPOINT_NAME
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT_NAME
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.metrics = json.loads(state["metrics"])
        self.bad_images = {int(k): v for k, v in json.loads(state["bad_images"]).items()}

    def write_metrics(self) -> None:
        write_text_atomic(self.run_dir / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in self.metrics))

    # -- mining ----------------------------------------------------------------------------
    def usable(self, indices: np.ndarray) -> np.ndarray:
        if not self.bad_images:
            return indices
        return indices[~np.isin(indices, list(self.bad_images))]

    def extract(self, indices: np.ndarray) -> np.ndarray:
        """Pooled descriptors ``(len(db), D)`` of ``indices`` with the current network (other rows 0)."""
        from .extract import extract_descriptors

        self.model.eval()
        indices = np.asarray(indices, dtype=np.int64)
        paths = [str(self.db.image_path(int(i))) for i in indices]
        with torch.no_grad():
            result = extract_descriptors(self.model, paths, image_size=self.config.image_size,
                                         batch_size=self.config.extract_batch_size, device=self.device,
                                         num_workers=self.config.num_workers, progress=self.config.progress)
        by_path = {p: i for p, i in zip(paths, indices)}
        for path, reason in result.failed:
            index = by_path[str(path)]
            if index not in self.bad_images:
                self.log(f"skipping unreadable training image {self.db.images[index]}: {reason}")
                self.bad_images[int(index)] = reason
        out = np.zeros((len(self.db), result.descriptors.shape[1] if len(result.paths) else self.model.out_dim),
                       dtype=np.float32)
        rows = [by_path[str(p)] for p in result.paths]
        out[rows] = result.descriptors
        return out

    def mine(self, queries: np.ndarray, pool: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Database-index tuples ``(T, 2 + N)`` for ``queries`` and facts about the mining."""
        config = self.config
        descriptors = None
        if self.positive_miner.needs_descriptors or self.negative_miner.needs_descriptors:
            needed = [queries, np.arange(len(self.db)) if pool is None else pool]
            if self.positive_miner.needs_descriptors:
                needed += [self.db.co_observing(int(q)) for q in queries]
            needed_ids = np.unique(np.concatenate(needed).astype(np.int64))
            descriptors = self.extract(needed_ids)
            queries = self.usable(queries)
            pool = self.usable(needed_ids if pool is None else pool)
        positives = self.positive_miner.mine(queries, self.db, descriptors, self.rng)
        negatives = self.negative_miner.mine(queries, self.db, descriptors, config.num_negatives,
                                             self.rng, pool=pool)
        tuples = assemble_tuples(queries, positives, negatives)
        if self.bad_images:
            tuples = tuples[~np.isin(tuples, list(self.bad_images)).any(axis=1)]
        facts = {"queries": int(len(queries)), "tuples": int(len(tuples)),
                 "queries_without_positive": int((positives < 0).sum())}
        if hasattr(self.negative_miner, "last_filled"):
            facts["queries_short_of_models"] = int(self.negative_miner.last_filled)
        return tuples, facts

    # -- one epoch -------------------------------------------------------------------------
    def embed(self, index: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
        if index not in cache:
            cache[index] = load_training_image(self.db.image_path(index), self.config.image_size)
        return self.model(cache[index].unsqueeze(0).to(self.device))[0]

    def train_tuples(self, tuples: np.ndarray) -> dict[str, float]:
        from tqdm import tqdm

        from .images import ImageLoadError

        config = self.config
        self.model.train()
        if config.freeze_bn:
            set_batchnorm_frozen(self.model)
        images: dict[int, torch.Tensor] = {}
        total_loss, positive_d, negative_d, used = 0.0, 0.0, 0.0, 0
        bar = tqdm(total=len(tuples), desc=f"epoch {self.epoch + 1} train", unit="tuple",
                   disable=not config.progress)
        for start in range(0, len(tuples), config.tuples_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            stepped = 0
            for row in tuples[start:start + config.tuples_per_batch]:
                if self.bad_images and any(int(i) in self.bad_images for i in row):
                    bar.update(1)  # an image found unreadable earlier in this epoch
                    continue
                try:
                    embeddings = torch.stack([self.embed(int(i), images) for i in row])
                except ImageLoadError as exc:
                    bad = next(int(i) for i in row if int(i) not in images)
                    self.bad_images[bad] = str(exc)
                    self.log(f"skipping a tuple: training image {self.db.images[bad]} cannot be read ({exc})")
                    bar.update(1)
                    continue
                local = torch.arange(len(row), device=embeddings.device).unsqueeze(0)
                loss = self.loss_fn(embeddings, local)
                if not torch.isfinite(loss):
                    raise RkitError(
                        f"the loss became {loss.item()} in epoch {self.epoch + 1}; the run stopped and the last good "
                        f"checkpoint (after epoch {self.epoch}) is kept in {self.run_dir}. Lower --lr (now "
                        f"{config.lr}) and resume with --resume, or start again.")
                loss.backward()
                with torch.no_grad():
                    pos, neg = tuple_squared_distances(embeddings.detach(), local)
                    positive_d += float(safe_sqrt(pos).sum())
                    negative_d += float(safe_sqrt(neg).mean())
                total_loss += float(loss.detach())
                used += 1
                stepped += 1
                bar.update(1)
            if stepped:
                self.optimizer.step()
        bar.close()
        used_or_one = max(used, 1)
        return {"loss": total_loss / used_or_one, "mean_positive_distance": positive_d / used_or_one,
                "mean_negative_distance": negative_d / used_or_one, "tuples_trained": used}

    def validation_map(self) -> float | None:
        if not self.config.val:
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

    def run_epoch(self) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        candidates = self.usable(self.candidates)
        count = len(candidates) if config.queries_per_epoch == 0 else min(config.queries_per_epoch, len(candidates))
        queries = np.sort(self.rng.choice(candidates, size=count, replace=False))
        everything = self.usable(np.arange(len(self.db), dtype=np.int64))
        pool = None if not config.pool_size else np.sort(
            self.rng.choice(everything, size=min(config.pool_size, len(everything)), replace=False))
        tuples, facts = self.mine(queries, pool)
        mined = time.perf_counter()
        if len(tuples) == 0:
            raise RkitError(f"epoch {self.epoch + 1}: no query got a positive from {config.miner!r} "
                            f"(e.g. m3's t_i/t_s too strict for this database); loosen its options or use m2")
        trained = self.train_tuples(tuples)
        done = time.perf_counter()
        record: dict[str, Any] = {"epoch": self.epoch + 1, **trained, **facts,
                                  "mining_s": round(mined - started, 3), "training_s": round(done - mined, 3),
                                  "tuples_per_s": round(trained["tuples_trained"] / max(done - mined, 1e-9), 4)}
        val = self.validation_map()
        if val is not None:
            record["val_map"] = val
            record["val_s"] = round(time.perf_counter() - done, 3)
        return record

    # -- after training: whitening and the saved model ------------------------------------
    def fit_final_whitening(self) -> dict[str, Any]:
        from .whitening import WhiteningData, fit_whitening

        config = self.config
        self.model.set_whitening(None)
        if config.whiten == "none" and config.whiten_dim is None:
            return {"method": "none"}
        everything = self.usable(np.arange(len(self.db), dtype=np.int64))
        descriptors = self.extract(everything)
        queries = self.usable(self.candidates)
        everything = self.usable(everything)
        needs = self.positive_miner.needs_descriptors or self.negative_miner.needs_descriptors
        positives = self.positive_miner.mine(queries, self.db, descriptors if needs else None, self.rng)
        negatives = self.negative_miner.mine(queries, self.db, descriptors if needs else None,
                                             config.num_negatives, self.rng, pool=everything)
        tuples = assemble_tuples(queries, positives, negatives)
        # rows of the whitening data are the usable images; map database indices to them
        row_of = np.full(len(self.db), -1, dtype=np.int64)
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

    def fit(self) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            while self.epoch < config.epochs:
                record = self.run_epoch()
                self.epoch += 1
                self.metrics.append(record)
                self.save_checkpoint()
                self.write_metrics()
                val = f", val mAP {record['val_map']:.4f}" if "val_map" in record else ""
                self.log(f"epoch {self.epoch}/{config.epochs}: loss {record['loss']:.4f}, "
                         f"d+ {record['mean_positive_distance']:.3f}, d- {record['mean_negative_distance']:.3f}, "
                         f"mining {record['mining_s']:.1f} s, training {record['training_s']:.1f} s "
                         f"({record['tuples_per_s']:.2f} tuples/s){val}")
        except KeyboardInterrupt:
            self.log(f"interrupted in epoch {self.epoch + 1}: the checkpoint after epoch {self.epoch} is kept; "
                     f"continue with `rkit train --run-dir {self.run_dir} --resume`")
            raise
        whitening_started = time.perf_counter()
        whitening = self.fit_final_whitening()
        model_dir = self.model.save(self.run_dir / MODEL_DIR, extra={"training": {
            "run_dir": str(self.run_dir), "epochs": self.epoch, "miner": config.miner,
            "negatives": config.negatives, "loss": config.loss, "image_size": config.image_size,
            "whitening": whitening}})
        summary = {"epochs": self.epoch, "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
                   "whitening": whitening, "whitening_s": round(time.perf_counter() - whitening_started, 3),
                   "train_s_this_session": round(time.perf_counter() - started, 3),
                   "database": {"images": len(self.db), "models": self.db.num_clusters,
                                "query_candidates": int(len(self.candidates))},
                   "bad_images": {self.db.images[i]: r for i, r in self.bad_images.items()},
                   "model_dir": str(model_dir)}
        write_text_atomic(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        return TrainResult(self.run_dir, model_dir, list(self.metrics), summary)


def _check_resume(saved: dict[str, Any], config: TrainConfig) -> None:
    changed = [key for key, value in config.to_dict().items()
               if key not in RESUMABLE_CHANGES and saved.get(key) != value]
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


def train(config: TrainConfig, *, resume: bool = False, database: TrainingDatabase | None = None,
          host: PluginHost | None = None, log: Callable[[str], None] = print,
          on_start: Callable[[], None] | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) the training described by ``config``.

    ``database`` overrides ``config.data`` (tests and scripts that build a database in code).
    Raises :class:`RkitError` for a setup that cannot work, before any training. ``on_start``
    is called once the setup is checked, just before the first epoch (the CLI writes its
    resolved configuration there).
    """
    run_dir = Path(config.run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume:
        _check_resume(read_saved_config(run_dir), config)
        if not checkpoint.is_file():
            log(f"no checkpoint in {run_dir} yet: starting the run from epoch 1")
    elif checkpoint.is_file():
        raise RkitError(f"{run_dir} already holds a training run: continue it with --resume, or choose "
                        f"another --run-dir")
    host = host or get_host()
    build_training_components(config, host)  # fail on a bad component before building any data
    db = database if database is not None else load_training_data(config, log)
    trainer = Trainer(config, db, host=host, log=log)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        from . import __version__

        record = {"options": config.to_dict(), "retrievalkit": __version__,
                  "database": {"images": len(db), "models": db.num_clusters, "root": str(db.root),
                               "given_in_code": database is not None}}
        write_text_atomic(run_dir / CONFIG_NAME, json.dumps(record, indent=2) + "\n")
    elif checkpoint.is_file():
        saved = json.loads((run_dir / CONFIG_NAME).read_text())
        saved["options"].update({key: getattr(config, key) for key in RESUMABLE_CHANGES})
        write_text_atomic(run_dir / CONFIG_NAME, json.dumps(saved, indent=2) + "\n")
        trainer.load_checkpoint()
        log(f"resuming {run_dir} after epoch {trainer.epoch}")
    if on_start is not None:
        on_start()
    return trainer.fit()
