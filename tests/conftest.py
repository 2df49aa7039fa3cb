"""Fixtures that build small synthetic image folders (no real data needed)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MakeImage = Callable[..., Path]
MakeKaggle = Callable[..., Path]


def textured_image(seed: int, size: tuple[int, int] = (48, 48), tint: int = 0) -> Image.Image:
    """Smooth random texture (a distinct perceptual hash per seed) plus a class tint (a learnable cue)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    colour = np.array([(tint * 97) % 256, (tint * 57 + 80) % 256, (tint * 151 + 160) % 256])
    return Image.fromarray(np.clip(img // 2 + colour // 2, 0, 255).astype(np.uint8))


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


REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
BIRDS_MINI = SHARED / "data" / "birds-mini"
needs_birds_mini = pytest.mark.skipif(
    not BIRDS_MINI.is_dir(), reason=f"real photos not found at {BIRDS_MINI}"
)

# A tiny timm model with random weights: trains in seconds on CPU, exercises every code path of a real one.
TINY = ["--arch", "test_efficientnet", "--weights", "none", "--image-size", "48", "--workers", "0"]
TINY_CLASSES = ["BLACK & YELLOW bROADBILL", "MIKADO  PHEASANT", "blue jay"]


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


def kill_cli_when(
    argv: list[str], ready: Callable[[], bool], timeout: float = 300, sig: int = signal.SIGKILL
) -> None:
    """Run `birdshield ARGV` in a subprocess and send it `sig` as soon as ready() (polled every 5 ms) holds.

    SIGKILL must kill it; SIGINT (Ctrl-C) must end it with exit 130 and, as the last line, no traceback
    but how to resume. Fails if the command ends first: the test then proves nothing about resuming.
    """
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "birdshield.cli", "--threads", "1", *argv]
    # Ctrl-C's default action in the child, even when pytest itself runs with SIGINT ignored (started with
    # `&` from a script): Python then turns SIGINT into KeyboardInterrupt, as for a user at a terminal.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"ended (exit {proc.returncode}) before it could be killed: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("never became ready to be killed")
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"birdshield {argv[0]}: interrupted") and "--resume" in last, err
