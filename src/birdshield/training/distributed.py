"""One process, or DistributedDataParallel under `torchrun` (gloo on CPU, nccl on CUDA); rank 0 writes."""

from __future__ import annotations

import os
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


def teardown(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
