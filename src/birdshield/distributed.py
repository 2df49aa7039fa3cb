"""One process, or many under `torchrun` (gloo on CPU, nccl on CUDA): the process group, each rank's share
of a list, and gathering the ranks' results. Training and evaluation both build on this; rank 0 writes files.

Without ``WORLD_SIZE`` in the environment (a plain single process) nothing here talks to other processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import SettingError
from .runtime import pick_device

T = TypeVar("T")

# How long a rank waits for the others at a collective before giving up. Training ranks meet every step,
# so a short wait finds a dead rank soon; evaluate and certify ranks meet only at the end, after hours of
# work whose length differs between ranks (robust images take every attack step, fooled ones stop early).
TRAINING_TIMEOUT = timedelta(minutes=30)
MEASURING_TIMEOUT = timedelta(hours=48)
TIMEOUT_ENV = "BIRDSHIELD_DIST_TIMEOUT_MINUTES"  # overrides both


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks: rank 0 of 1 in a single process."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def timeout_for(default: timedelta) -> timedelta:
    """`default`, or the minutes given in $BIRDSHIELD_DIST_TIMEOUT_MINUTES."""
    minutes = os.environ.get(TIMEOUT_ENV)
    if not minutes:
        return default
    try:
        value = float(minutes)
    except ValueError:
        raise SettingError(f"${TIMEOUT_ENV} must be a number of minutes, got {minutes!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingError(f"${TIMEOUT_ENV} must be a positive number of minutes, got {minutes!r}")
    return timedelta(minutes=value)


def setup(device_name: str, timeout: timedelta = TRAINING_TIMEOUT) -> tuple[Dist, torch.device]:
    """Join the process group `torchrun` describes in the environment (none: a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout_for(timeout))
    return Dist(dist.get_rank(), dist.get_world_size()), device


def teardown(d: Dist, barrier: bool = True) -> None:
    """Leave the process group; `barrier=False` after an error, when the other ranks may never reach one."""
    if d.world > 1 and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(
    device_name: str, timeout: timedelta = TRAINING_TIMEOUT
) -> Iterator[tuple[Dist, torch.device]]:
    """setup() for the block; the group is left at its end however it ends (torchrun stops the others)."""
    d, device = setup(device_name, timeout)
    try:
        yield d, device
    except BaseException:
        teardown(d, barrier=False)
        raise
    teardown(d)


def all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum `values` over all ranks."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: T, d: Dist) -> list[T]:
    """``obj`` of every rank, in rank order (pickled between our own processes: keep it small)."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def main_first(d: Dist, make: Callable[[], T]) -> T:
    """``make()`` on rank 0, then on the others: a cache it writes (the ONNX export) is written once."""
    if not d.main:
        barrier(d)
    value = make()
    if d.main:
        barrier(d)
    return value


def shard(indices: list[int], d: Dist, pad: bool) -> list[int]:
    """This rank's share of `indices`. With `pad`, the list is first repeated from its start to a multiple
    of the world size (as torch's DistributedSampler does): every rank then takes the same number of
    training steps, so DDP's gradient all-reduce never waits for a rank that has run out of images."""
    if pad and d.world > 1 and len(indices) % d.world:
        short = d.world - len(indices) % d.world
        indices = indices + (indices * math.ceil(short / len(indices)))[:short]
    return indices[d.rank :: d.world]
