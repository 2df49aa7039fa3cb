"""Batches for training and validation: each rank's share of a (per-epoch shuffled) split, on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .. import data
from ..distributed import Dist, shard
from .config import TrainConfig


class EpochOrder(Sampler[int]):
    """This rank's share of a split, in a fresh seeded order each epoch when `shuffle` (call `set_epoch`
    before each pass; the order depends only on the seed and the epoch, so a resumed run sees the same)."""

    def __init__(self, n: int, seed: int, d: Dist, shuffle: bool) -> None:
        self.n, self.seed, self.d, self.shuffle, self.epoch = n, seed, d, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return shard(list(range(self.n)), self.d, pad=False)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return shard(torch.randperm(self.n, generator=g).tolist(), self.d, pad=True)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def make_loader(ds: data.ImageDataset, cfg: TrainConfig, d: Dist, shuffle: bool) -> DataLoader:
    """A loader made once per run: its workers are forked at the first pass and kept for the next ones
    (the sampler's `set_epoch` reshuffles), rather than forked again for every epoch and validation."""
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=EpochOrder(len(ds), cfg.seed, d, shuffle),
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        collate_fn=data.collate_skip_bad,
        pin_memory=torch.cuda.is_available(),
    )


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device as [0, 1] floats (uint8 pixels from the decoded cache are scaled there)."""
    x = data.as_float(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
