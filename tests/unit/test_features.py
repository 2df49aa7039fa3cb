"""The probe's on-disk feature cache: reused, resumed after a kill, keyed by what makes its numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from birdshield import data
from birdshield.models import create_model
from birdshield.training.config import TrainConfig
from birdshield.training.features import cache_key, feature_fn, split_features
from birdshield.training.prepare import FAST_CPU_MIN_IMAGES
from birdshield.training.prepare import _fast_cpu as _fast_cpu_logged

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tmp_path: Path, make_kaggle):
    root = make_kaggle(tmp_path / "data", ["a", "b"], {"train": 7, "valid": 2})
    model = create_model(["a", "b"], arch="test_efficientnet", weights=None, image_size=48).eval()
    samples = data.discover(root).splits["train"]
    cfg = TrainConfig("", "", batch_size=4, workers=0)
    return model, data.ImageDataset(samples, 48), cfg, tmp_path / "cache"


class Counting:
    """A feature-function factory that counts the images it is given and can fail after `fail_after`."""

    def __init__(self, model, cfg, fail_after: int | None = None) -> None:
        self.fn = feature_fn(model, torch.device("cpu"), cfg)
        self.images, self.fail_after = 0, fail_after

    def __call__(self):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.fail_after is not None and self.images >= self.fail_after:
                raise KeyboardInterrupt  # as a kill between two chunks
            self.images += len(x)
            return self.fn(x)

        return forward


def _features(setup, forward, views=("plain", "flip")):
    model, ds, cfg, cache = setup
    return split_features(model, ds, views, cfg, torch.device("cpu"), cache, "test", forward)


def test_second_run_reads_the_cache_without_a_forward(setup) -> None:
    model, ds, cfg, _ = setup
    first, key = _features(setup, Counting(model, cfg))
    again = Counting(model, cfg)
    second, key2 = _features(setup, again)
    assert key == key2 and again.images == 0
    for view in ("plain", "flip"):
        assert np.array_equal(first.views[view], second.views[view])
        assert np.abs(first.views[view]).sum() > 0  # rows were filled, not left as zeros
    assert not np.array_equal(first.views["plain"], first.views["flip"])


def test_killed_fill_resumes_at_the_chunk_in_flight(setup, tmp_path: Path) -> None:
    model, ds, cfg, _ = setup
    whole, _ = split_features(model, ds, ("plain",), cfg, torch.device("cpu"), tmp_path / "other", "t",
                              Counting(model, cfg))  # fmt: skip
    killed = Counting(model, cfg, fail_after=8)  # two chunks of 4 finish, the third is killed
    with pytest.raises(KeyboardInterrupt):
        _features(setup, killed, ("plain",))
    resumed = Counting(model, cfg)
    again, _ = _features(setup, resumed, ("plain",))
    assert resumed.images == len(ds) - 8  # only the rows not yet committed
    np.testing.assert_array_equal(again.views["plain"], whole.views["plain"])


def test_unreadable_images_are_marked_not_usable(setup) -> None:
    model, ds, cfg, _ = setup
    ds.samples[3].path.write_bytes(b"not a jpeg")
    feats, _ = _features(setup, Counting(model, cfg), ("plain",))
    assert feats.ok.tolist() == [i != 3 for i in range(len(ds))]
    assert 3 not in feats.usable


def test_key_follows_the_images_and_the_trunk_not_the_head(setup) -> None:
    model, ds, _, _ = setup
    key = cache_key(model, ds.samples)
    with torch.no_grad():
        model.head.weight.add_(1)
    assert cache_key(model, ds.samples) == key
    path = ds.samples[0].path
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    assert cache_key(model, ds.samples) != key
    key = cache_key(model, ds.samples)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1)
    assert cache_key(model, ds.samples) != key


def test_onnx_features_match_torch(setup) -> None:
    model, _, cfg, _ = setup
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        expected = model.forward_features(x)
    torch.testing.assert_close(feature_fn(model, torch.device("cpu"), cfg)(x), expected, atol=1e-4, rtol=1e-4)


def _fast_cpu(cfg: TrainConfig, device: torch.device, n_train: int) -> TrainConfig:
    return _fast_cpu_logged(cfg, device, n_train, lambda line: None)


def test_fast_cpu_path_is_chosen_for_large_data_on_a_cpu_only() -> None:
    cfg, cpu = TrainConfig("", ""), torch.device("cpu")
    fast = _fast_cpu(cfg, cpu, FAST_CPU_MIN_IMAGES)
    assert (fast.depth, fast.augment.hflip) == ("probe", False)
    assert _fast_cpu(cfg, cpu, FAST_CPU_MIN_IMAGES - 1) is cfg
    assert _fast_cpu(cfg, torch.device("cuda"), 10**6) is cfg
    assert _fast_cpu(TrainConfig("", "", fast_cpu="off"), cpu, 10**6).depth == "last-2"
    robust = TrainConfig.from_preset("robust-cpu", "", "")
    assert _fast_cpu(robust, cpu, 10**6) is robust  # adversarial training cannot use cached features
    with pytest.raises(ValueError, match="excludes noise"):
        _fast_cpu(TrainConfig.from_preset("robust-cpu", "", "", fast_cpu="on"), cpu, 10)


def test_keys_take_a_file_name_that_is_not_utf8(tmp_path: Path, make_kaggle) -> None:
    """The feature cache's key and the run's resume fingerprint read such a name as its bytes."""
    from birdshield.training.prepare import run_fingerprint

    root = make_kaggle(tmp_path / "data", ["a", "b"], {"train": 3, "valid": 1})
    first = root / "train" / "a" / "000.jpg"
    first.rename(first.with_name(os.fsdecode(b"bird\xff.jpg")))
    dataset = data.discover(root)
    assert any(b"\xff" in os.fsencode(s.path) for s in dataset.splits["train"])
    model = create_model(["a", "b"], arch="test_efficientnet", weights=None, image_size=48)
    assert len(cache_key(model, dataset.splits["train"])) == 24
    cfg = TrainConfig(str(root), str(tmp_path / "run"))
    assert run_fingerprint(cfg, dataset) == run_fingerprint(cfg, data.discover(root))
