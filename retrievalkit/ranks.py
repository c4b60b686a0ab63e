"""The processes of a training run under ``torchrun`` (torch.distributed), or the single one.

``torchrun --nproc-per-node N -m retrievalkit train ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
each; :func:`start` joins the process group they describe with the backend that fits the
device: NCCL for CUDA, gloo for the CPU. Each CUDA rank uses GPU ``LOCAL_RANK``. Without those
variables (a plain ``rkit train``) there is one rank and every helper here is a no-op, so the
trainer has one code path.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import RkitError
from .shards import launched_by_torchrun


@dataclasses.dataclass
class Ranks:
    """Where this process stands in the run: rank ``rank`` of ``world`` (``local_*`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    started_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's rows of ``count`` items dealt round-robin: ``rank, rank + world, ...``."""
        return slice(self.rank, count, self.world)

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (picklable objects)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def stop(self) -> None:
        """Leave the process group if :func:`start` joined it."""
        if self.started_group and dist.is_initialized():
            dist.destroy_process_group()
            self.started_group = False


def start(device_name: str, timeout_minutes: float = 30.0) -> Ranks:
    """Resolve the device and, under torchrun, join the process group (module docstring)."""
    if not launched_by_torchrun():
        return Ranks(device=resolve_device(device_name))
    if not dist.is_available():
        raise RkitError("torchrun started several processes, but this torch build has no torch.distributed: "
                        "run one process (`rkit train`), or install a torch with distributed support")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RkitError(f"torchrun started {local_world} processes on this machine but it has "
                            f"{torch.cuda.device_count()} GPU(s): use --nproc-per-node {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise RkitError(f"several processes need CUDA (NCCL) or the CPU (gloo); the device is {device}")
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        started = True
    return Ranks(rank, world, local_rank, local_world, device, started)
