"""The pieces that keep DDP ranks in step: equal training shards and the zero-gradient step."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from torch import nn

from birdshield.distributed import (
    MEASURING_TIMEOUT,
    TIMEOUT_ENV,
    TRAINING_TIMEOUT,
    Dist,
    shard,
    timeout_for,
)
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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, MEASURING_TIMEOUT),
        ("", MEASURING_TIMEOUT),
        ("90", timedelta(minutes=90)),
        ("0.5", timedelta(seconds=30)),
    ],
)
def test_timeout_is_the_default_or_the_environments_minutes(
    value: str | None, expected: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, value)
    assert timeout_for(MEASURING_TIMEOUT) == expected


@pytest.mark.parametrize("value", ["ten", "0", "-5", "nan", "inf", "1e400", "5m"])
def test_a_timeout_that_is_not_a_positive_number_of_minutes_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=rf"\${TIMEOUT_ENV} must be a .*number of minutes, got '{value}'"):
        timeout_for(TRAINING_TIMEOUT)


def test_the_process_group_waits_as_long_as_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup() hands the timeout to the process group (the override applies to evaluate's long default)."""
    import torch.distributed as dist

    from birdshield import distributed

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(timeout=timeout))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert distributed.setup("cpu", MEASURING_TIMEOUT)[0] == Dist(1, 2)
    assert seen["timeout"] == MEASURING_TIMEOUT
    monkeypatch.setenv(TIMEOUT_ENV, "600")
    distributed.setup("cpu", MEASURING_TIMEOUT)
    assert seen["timeout"] == timedelta(hours=10)
