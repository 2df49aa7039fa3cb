"""Batches for training and validation: each rank's share of a (per-epoch shuffled) split, on the device."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Subset

from .. import data
from .config import TrainConfig
from .distributed import Dist


def make_loader(
    ds: data.ImageDataset, cfg: TrainConfig, d: Dist, shuffle: bool, epoch: int = 0
) -> DataLoader:
    indices = list(range(len(ds)))
    if shuffle:
        g = torch.Generator().manual_seed(
            cfg.seed * 100_003 + epoch
        )  # a fresh order per epoch, same on resume
        indices = torch.randperm(len(ds), generator=g).tolist()
    return DataLoader(
        Subset(ds, shard(indices, d, pad=shuffle)),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=data.collate_skip_bad,
        pin_memory=torch.cuda.is_available(),
    )


def shard(indices: list[int], d: Dist, pad: bool) -> list[int]:
    """This rank's share of `indices`. With `pad`, the list is first repeated from its start to a multiple
    of the world size (as torch's DistributedSampler does): every rank then takes the same number of
    training steps, so DDP's gradient all-reduce never waits for a rank that has run out of images."""
    if pad and d.world > 1 and len(indices) % d.world:
        short = d.world - len(indices) % d.world
        indices = indices + (indices * math.ceil(short / len(indices)))[:short]
    return indices[d.rank :: d.world]


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
