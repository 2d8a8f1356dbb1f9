"""Multi-process training with ``torchrun`` (DistributedDataParallel, one process per GPU).

``torchrun --nproc_per_node=N -m hyperct.cli.main train --config FILE`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed`` then
joins the process group (NCCL on CUDA, gloo on CPU). Rank 0 alone writes the run folder; every
rank reads the same data description and draws the same epoch plan (order and tasks come from the
seed and the epoch), then takes its share of each global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for one process)."""
    world = env_world()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    # A rank that never arrives (or a peer address that cannot be reached) fails after this many
    # seconds instead of torch's default 30 minutes.
    timeout = timedelta(seconds=float(os.environ.get("HYPERCT_DIST_TIMEOUT_S", "600")))
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank, world, local, True)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def gather_objects(info: DistInfo, obj):
    """Every rank's ``obj`` in rank order (a one-element list for a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shutdown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
