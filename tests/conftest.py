"""Fixtures: small synthetic image folders and a tiny trained run (no real data needed); the rest of what
tests share is in helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest
from helpers import TINY, TINY_CLASSES, textured_image

MakeImage = Callable[..., Path]
MakeKaggle = Callable[..., Path]


@pytest.fixture
def make_image() -> MakeImage:
    """make_image(path, seed=0, size=(48, 48), tint=0) writes a textured RGB image, format from the suffix."""

    def make(path: Path, seed: int = 0, size: tuple[int, int] = (48, 48), tint: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        textured_image(seed, size, tint).save(path)
        return path

    return make


@pytest.fixture
def make_kaggle(make_image: MakeImage) -> MakeKaggle:
    """make_kaggle(root, classes, counts={"train": 4, "valid": 2, "test": 2}) builds root/<split>/<class>/.

    Every image has its own texture seed, so no two files are (near-)duplicates; each class has its own tint.
    """

    def make(root: Path, classes: Iterable[str], counts: Mapping[str, int] | None = None) -> Path:
        counts = counts or {"train": 4, "valid": 2, "test": 2}
        seed = 0
        for tint, name in enumerate(classes):
            for split, n in counts.items():
                for i in range(n):
                    seed += 1
                    make_image(root / split / name / f"{i:03d}.jpg", seed=seed, tint=tint)
        return root

    return make


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """For modules of tiny tensors: a second intra-op thread only adds overhead (10x slower on a busy 2-core
    machine, where each op waits for the descheduled thread). Use: pytestmark = usefixtures("one_thread")."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Training's feature caches go to a temporary folder, never the user's ~/.cache (subprocesses too)."""
    import os

    os.environ["BIRDSHIELD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout tree of 3 tinted classes with awkward names (&, double spaces, odd capitals)."""
    root = tmp_path_factory.mktemp("tiny_data")
    seed = 0
    for tint, name in enumerate(TINY_CLASSES):
        for split, n in {"train": 12, "valid": 4, "test": 4}.items():
            for i in range(n):
                seed += 1
                path = root / split / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                textured_image(seed, tint=tint).save(path)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained by the real CLI on tiny_data (shared by the tests that only read it)."""
    from birdshield.cli import main

    out = tmp_path_factory.mktemp("tiny_run")
    assert (
        main(
            [
                "train",
                str(tiny_data),
                "--out",
                str(out),
                *TINY,
                "--epochs",
                "6",
                "--batch-size",
                "8",
                "--depth",
                "full",
                "--lr",
                "0.01",
                "--backbone-lr",
                "0.01",
                "--probe-epochs",
                "0",
            ]
        )
        == 0
    )
    return out
