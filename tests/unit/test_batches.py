"""The training loader: a seeded order per epoch that a resumed run repeats; workers kept across epochs."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from birdshield.distributed import Dist
from birdshield.training.batches import EpochOrder, make_loader
from birdshield.training.config import TrainConfig


def test_each_epoch_has_its_own_order_and_a_fresh_sampler_repeats_it() -> None:
    sampler = EpochOrder(50, seed=3, d=Dist(), shuffle=True)
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(50))
    resumed = EpochOrder(50, seed=3, d=Dist(), shuffle=True)  # a resumed run starts at epoch 2
    resumed.set_epoch(2)
    assert list(resumed) == orders[1]


def test_ranks_share_an_epoch_without_overlap_and_validation_keeps_its_order() -> None:
    shares = []
    for rank in range(3):
        sampler = EpochOrder(10, seed=0, d=Dist(rank, 3), shuffle=True)
        sampler.set_epoch(4)
        shares.append(list(sampler))
    assert {len(s) for s in shares} == {4}  # padded to equal steps per rank
    assert set().union(*shares) == set(range(10))
    assert list(EpochOrder(5, seed=0, d=Dist(), shuffle=False)) == [0, 1, 2, 3, 4]


class _WorkerPid(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(os.getpid())]), i


def test_the_loaders_workers_live_across_epochs() -> None:
    cfg = TrainConfig(data="unused", out="unused", batch_size=4, workers=2)
    loader = make_loader(_WorkerPid(), cfg, Dist(), shuffle=True)
    pids = []
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        pids.append({int(x) for batch in loader for x in batch[0].flatten().tolist()})
    assert pids[0] == pids[1] and os.getpid() not in pids[0]
