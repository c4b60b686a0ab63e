"""Sharded and distributed extraction: split the batches, gather or merge the pooled vectors.

Two ways to spread one extraction over processes or machines, both giving exactly the
descriptors of a single process:

* ``torchrun --nproc-per-node N -m retrievalkit extract ...``: each rank (``torch.distributed``,
  gloo on CPU, NCCL on CUDA, from torchrun's environment variables) runs every N-th batch, the
  pooled vectors are gathered, and rank 0 writes the one descriptors file.
* ``rkit extract --shard K/N`` on any scheduler, then ``rkit merge SHARD... --out FILE``: each
  shard file holds the pooled vectors of its batches; the merge checks that the shards belong
  together (same model, weights, options and image list: one fingerprint) and cover every
  image exactly once, then finishes the descriptors as a single run would.

Identity. Every process plans the batches of the whole set (:func:`retrievalkit.extract.plan_batches`)
and takes its share of them, so each image goes through the network with the same batch-mates as
in one process; the scales are combined and the whitening applied once, on all the gathered
vectors (:func:`retrievalkit.extract.finish_descriptors`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RkitError

if TYPE_CHECKING:
    from .extract import ExtractionResult, Pooled
    from .extractor import Extractor

SHARD_KIND = "rkit-extract-shard"


# -- torch.distributed (torchrun) ------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1 and a ``RANK``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def distributed_share() -> tuple[int, int]:
    """``(rank, world size)``, initialising the process group from torchrun's variables if needed.

    gloo on CPU, NCCL when CUDA is available (each rank then uses the GPU ``LOCAL_RANK``).
    ``(0, 1)`` when ``torch.distributed`` is unavailable or there is a single process.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if not launched_by_torchrun():
            return 0, 1
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        atexit.register(_leave_process_group)
    return dist.get_rank(), dist.get_world_size()


def _leave_process_group() -> None:
    """At exit, leave the group :func:`distributed_share` joined. A rank that exits still in it
    can abort while its gloo threads are torn down ("terminate called without an active
    exception", SIGABRT: the 2-rank extraction test failed so, now and then, before this)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_checkpoint(checkpoint: str | Path, share: tuple[int, int]) -> Path:
    """Each rank's own checkpoint: ``NAME.partial.npz`` -> ``NAME.partial.rank1-of-4.npz``."""
    checkpoint = Path(checkpoint)
    if share[1] == 1:
        return checkpoint
    return checkpoint.with_name(f"{checkpoint.name.removesuffix('.npz')}.rank{share[0] + 1}-of-{share[1]}.npz")


def gather_share(pooled: Pooled, failed: dict[int, str]) -> tuple[Pooled, dict[int, str]]:
    """Every rank's pooled vectors and failures, on every rank (``all_gather_object``)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (pooled, failed))
    all_pooled: Pooled = {}
    all_failed: dict[int, str] = {}
    for rank_pooled, rank_failed in gathered:
        all_pooled.update(rank_pooled)
        all_failed.update(rank_failed)
    return all_pooled, all_failed


def is_writer() -> bool:
    """Whether this process writes the outputs: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# -- --shard K/N and merge ---------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(1, 4)``: the 0-based shard number and the count (written 1-based)."""
    message = f"--shard {text!r}: write K/N with 1 <= K <= N, e.g. --shard 2/4 for the second of four shards"
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise RkitError(message) from None
    if not 1 <= k <= n:
        raise RkitError(message)
    return k - 1, n


def extract_shard(extractor: Extractor, paths: Sequence[str], shard: tuple[int, int], out: Path, *,
                  root: Path | None = None, checkpoint: Path | None = None, checkpoint_every: float = 60.0,
                  progress: bool = True) -> dict[str, Any]:
    """Pool shard ``(k, n)`` of the images and write it to ``out``; returns the shard header."""
    from .extract import plan_extraction, pool_share, save_pooled

    kwargs = extractor._kwargs(progress)
    root = Path(root).resolve() if root is not None else None  # the fingerprint names absolute files
    plan = plan_extraction(paths, root=root, image_size=kwargs["image_size"], scales=kwargs["scales"])
    share = pool_share(extractor.model, plan, share=shard, batch_size=kwargs["batch_size"],
                       max_batch_pixels=kwargs["max_batch_pixels"], device=kwargs["device"],
                       num_workers=kwargs["num_workers"], progress=progress, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every)
    header = {"kind": SHARD_KIND, "fingerprint": share.fingerprint, "shard": [shard[0], shard[1]],
              "batching": [kwargs["batch_size"], kwargs["max_batch_pixels"]], "paths": plan.paths,
              "root": str(root) if root is not None else None,
              "settings": extractor.settings.to_dict(), "seconds": round(share.seconds, 3)}
    save_pooled(Path(out), header, share.pooled, share.failed)
    if checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    return header


def _read_shards(files: Sequence[Path]) -> list[tuple[Path, dict[str, Any], Pooled, dict[int, str]]]:
    from .extract import load_pooled

    shards = []
    for file in files:
        header, pooled, failed = load_pooled(Path(file), what="extraction shard file")
        if header.get("kind") != SHARD_KIND:
            raise RkitError(f"{file} is not a shard of `rkit extract --shard K/N` (a checkpoint or another file?)")
        shards.append((Path(file), header, pooled, failed))
    if not shards:
        raise RkitError("no shard files given: list every file written by `rkit extract --shard K/N`")
    return shards


def check_shards(shards: Sequence[tuple[Path, dict[str, Any], Pooled, dict[int, str]]]) -> None:
    """Refuse shards that do not belong together, repeat a shard or an image, or miss one."""
    first_file, first, _, _ = shards[0]
    for file, header, _, _ in shards[1:]:
        for key, what in (("fingerprint", "model, weights, image list or sizes"), ("batching", "batch size"),
                          ("settings", "options")):
            if _compared(header, key) != _compared(first, key):
                raise RkitError(f"{file} and {first_file} are shards of different extractions (their {what} "
                                f"differ): merge only the shards of one `rkit extract --shard K/N` run")
    count = first["shard"][1]
    numbers = sorted(header["shard"][0] for _, header, _, _ in shards)
    if numbers != list(range(count)):
        missing = sorted(set(range(count)) - set(numbers))
        repeated = sorted({k for k in numbers if numbers.count(k) > 1})
        raise RkitError(f"the shards do not cover 1..{count} once: "
                        + (f"missing {', '.join(f'{k + 1}/{count}' for k in missing)}" if missing else "")
                        + ("; " if missing and repeated else "")
                        + (f"given twice {', '.join(f'{k + 1}/{count}' for k in repeated)}" if repeated else "")
                        + ": give each shard file exactly once")
    seen: dict[tuple[int, int], Path] = {}
    for file, _, pooled, _ in shards:
        for key in pooled:
            if key in seen:
                raise RkitError(f"{file} and {seen[key]} both hold image {first['paths'][key[0]]!r}: the shards "
                                f"overlap; extract them again with the same --shard N")
            seen[key] = file


def _compared(header: dict[str, Any], key: str) -> Any:
    value = header.get(key)
    if key == "settings" and isinstance(value, dict):  # where a shard ran does not change its numbers
        value = {k: v for k, v in value.items() if k not in ("device", "workers")}
    return value


def merge_shard_files(files: Sequence[Path], *, progress: bool = True) -> tuple[Extractor, ExtractionResult, dict[str, Any]]:
    """The descriptors of a sharded extraction, exactly as one process would give them.

    Returns ``(extractor, result, first shard header)``; the extractor is rebuilt from the
    shards' settings (its fingerprint must match theirs: same model and weights).
    """
    from .extract import ExtractionPlan, finish_descriptors
    from .extractor import ExtractionSettings, Extractor

    shards = _read_shards(files)
    check_shards(shards)
    header = shards[0][1]
    extractor = Extractor.open(ExtractionSettings.from_dict(header["settings"]))
    root = Path(header["root"]) if header.get("root") else None
    paths = [str(p) for p in header["paths"]]
    files_ = [str(root / p) if root is not None else p for p in paths]
    plan = ExtractionPlan(paths, files_, [None] * len(paths), extractor.settings.image_size,
                          [float(s) for s in extractor.settings.scales], [], {})
    if plan.fingerprint(extractor.model) != header["fingerprint"]:
        raise RkitError("the model the shards name is not the one they were extracted with (its weights or "
                        "options changed since): extract the shards again")
    pooled: Pooled = {}
    failed: dict[int, str] = {}
    for _, _, shard_pooled, shard_failed in shards:
        pooled.update(shard_pooled)
        failed.update(shard_failed)
    _check_complete(plan, pooled, failed)
    seconds = sum(float(h.get("seconds", 0.0)) for _, h, _, _ in shards)
    return extractor, finish_descriptors(extractor.model, plan, pooled, failed, extractor.whitening, seconds), header


def _check_complete(plan: Any, pooled: Pooled, failed: dict[int, str]) -> None:
    missing = [plan.paths[i] for i in range(len(plan.paths))
               if i not in failed and not all((i, s) in pooled for s in range(len(plan.scales)))]
    if missing:
        raise RkitError(f"{len(missing)} image(s) are in no shard (e.g. {missing[0]!r}): a shard is incomplete "
                        f"(interrupted?); run its `rkit extract --shard K/N` again, then merge")
