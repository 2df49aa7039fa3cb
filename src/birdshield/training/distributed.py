"""One process, or DistributedDataParallel under `torchrun` (gloo on CPU, nccl on CUDA); rank 0 writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import pick_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group `torchrun` describes in the environment (none: a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum `values` over all ranks."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def teardown(d: Dist, barrier: bool = True) -> None:
    """Leave the process group; `barrier=False` after an error, when the other ranks may never reach one."""
    if d.world > 1 and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(device_name: str) -> Iterator[tuple[Dist, torch.device]]:
    """setup() for the block; the group is left at its end however it ends (torchrun stops the others)."""
    d, device = setup(device_name)
    try:
        yield d, device
    except BaseException:
        teardown(d, barrier=False)
        raise
    teardown(d)
