"""The pieces that keep DDP ranks in step: equal training shards and the zero-gradient step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from birdshield.distributed import Dist, shard
from birdshield.training.config import TrainConfig
from birdshield.training.loop import _zero_gradient_step

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [1, 2, 5, 13])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_padded_shards_are_equal_and_cover_every_index(n: int, world: int) -> None:
    shares = [shard(list(range(n)), Dist(rank, world), pad=True) for rank in range(world)]
    assert {len(s) for s in shares} == {math.ceil(n / world)}  # as many steps on every rank
    assert set().union(*shares) == set(range(n))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_unpadded_shards_split_the_indices_exactly(world: int) -> None:
    indices = [4, 0, 3, 1, 2]
    shares = [shard(indices, Dist(rank, world), pad=False) for rank in range(world)]
    assert sorted(i for s in shares for i in s) == sorted(indices)


def test_one_process_is_never_padded() -> None:
    assert shard([2, 0, 1], Dist(), pad=True) == [2, 0, 1]


def test_zero_gradient_step_changes_no_weight_and_no_batch_norm_statistic() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(2, 3, 8, 8))  # materialise the lazy layer; BN statistics move away from their init
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _zero_gradient_step(net, opt, 8, torch.device("cpu"), TrainConfig("d", "o"))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())  # took part in backward
    assert net[1].training  # batch norm back in train mode for the real steps
