"""Batches for training and validation: each rank's share of a (per-epoch shuffled) split, on the device."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from .. import data
from ..distributed import Dist, shard
from .config import TrainConfig


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


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device as [0, 1] floats (uint8 pixels from the decoded cache are scaled there)."""
    x = data.as_float(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
