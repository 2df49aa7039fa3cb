"""What the tests share besides fixtures: paths, the tiny model and data recipes, image builders, and a
way to kill a command mid-run. Fixtures are in conftest.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
BIRDS_MINI = SHARED / "data" / "birds-mini"
needs_birds_mini = pytest.mark.skipif(
    not BIRDS_MINI.is_dir(), reason=f"real photos not found at {BIRDS_MINI}"
)

# A tiny timm model with random weights: trains in seconds on CPU, exercises every code path of a real one.
TINY = ["--arch", "test_efficientnet", "--weights", "none", "--image-size", "48", "--workers", "0"]
TINY_CLASSES = ["BLACK & YELLOW bROADBILL", "MIKADO  PHEASANT", "blue jay"]


def textured_image(seed: int, size: tuple[int, int] = (48, 48), tint: int = 0) -> Image.Image:
    """Smooth random texture (a distinct perceptual hash per seed) plus a class tint (a learnable cue)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    colour = np.array([(tint * 97) % 256, (tint * 57 + 80) % 256, (tint * 151 + 160) % 256])
    return Image.fromarray(np.clip(img // 2 + colour // 2, 0, 255).astype(np.uint8))


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, in any folder."""
    return [p for p in root.rglob("*") if p.is_file()]


def run_meta(run: Path) -> dict:
    """A run directory's birdshield.json."""
    import json

    return json.loads((run / "birdshield.json").read_text())


def tiny_model(classes: list[str] | None = None, image_size: int = 32, seed: int = 0):
    """A randomly initialised tiny timm classifier in eval mode: every code path of a real one, in
    milliseconds."""
    import torch

    from birdshield import models

    torch.manual_seed(seed)
    model = models.create_model(
        classes or TINY_CLASSES, arch="test_efficientnet", weights=None, image_size=image_size
    )
    return model.eval()


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
