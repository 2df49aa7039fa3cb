"""What the benchmarks share: a run directory loaded as a user's plain script would load it, and a timed
whole-process run."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def plain_model(run_dir: Path, threads: int):
    """(model, preprocess, class names) as a user writes them: timm.create_model + load_state_dict with
    Normalize in front, torchvision Resize + CenterCrop + ToTensor, eval mode, NCHW, default allocator."""
    import safetensors.torch
    import timm
    import torch
    from torchvision import transforms

    if threads:
        torch.set_num_threads(threads)
    meta = json.loads((run_dir / "birdshield.json").read_text())
    names, size = meta["class_names"], meta["image_size"]
    net = timm.create_model(meta["arch"], pretrained=False, num_classes=len(names))
    net.load_state_dict(safetensors.torch.load_file(str(run_dir / "model.safetensors")))
    model = torch.nn.Sequential(transforms.Normalize(meta["mean"], meta["std"]), net).eval()
    steps = [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]
    return model, transforms.Compose(steps), names


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run `cmd` as a whole process: (wall seconds, its stdout); exits with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd[:8])} ...\n{done.stderr[-3000:]}")
    return seconds, done.stdout
