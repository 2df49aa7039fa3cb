"""Prediction throughput: a plain timm + torchvision loop vs `birdshield predict` (torch and onnxruntime).

    python benchmarks/bench_predict.py [--data DIR] [--limit N] [--threads T] [--repeats R]
                                       [--device cuda] [--workers W]

Photos: every image of every split of ``--data`` (default ``$BIRDSHIELD_SHARED/data/kaggle-504``, else
``<repo>/../shared/data/kaggle-504``: 2,520 photos), the first ``--limit`` in path order for a smoke test.
Model: one run directory made here, an untrained 504-class head (one class per species folder of the
train split) over the offline ImageNet tf_efficientnet_lite0 weights; weights do not change the speed.

Each side is a whole process (subprocess, wall time from start to exit, start-up and imports included):

- (a) plain: what a user writes: timm.create_model + load_state_dict(model.safetensors), PIL open /
  convert("RGB"), torchvision Resize(224) + CenterCrop(224) + ToTensor + Normalize, batches of 32 under
  torch.no_grad, NCHW, default glibc allocator (MALLOC_* variables removed from its environment), a CSV of
  top-1 species written at the end.
- (b) ``birdshield predict RUN PHOTOS... --out CSV`` (torch runtime).
- (c) the same with ``--runtime onnx``. Its one-off export into RUN/model.onnx is done (and timed) before
  the runs, so (c) measures what every later run pays.

All sides get the same ``--threads`` (0: each library's default) and ``--device`` (a GPU: the plain loop
moves its batches there; ours takes ``--device`` and ``--workers`` decoding threads). Prints images/s, the
ratio of each to (a) and how often the top-1 species agree. ``--repeats`` runs the three sides round-robin
R times and keeps each side's fastest run (a busy machine only ever makes a run slower).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from _plain import timed

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
BATCH = 32


def plain_loop(run_dir: Path, list_file: Path, out: Path, threads: int, device: str = "cpu") -> None:
    """Side (a), as a user would write it."""
    import json

    import safetensors.torch
    import timm
    import torch
    from PIL import Image
    from torchvision import transforms

    if threads:
        torch.set_num_threads(threads)
    class_names = json.loads((run_dir / "birdshield.json").read_text())["class_names"]
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=len(class_names))
    net.load_state_dict(safetensors.torch.load_file(str(run_dir / "model.safetensors")))
    net.eval().to(device)
    preprocess = transforms.Compose(
        [
            transforms.Resize(224),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    paths = list_file.read_text().splitlines()
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), BATCH):
            batch = paths[start : start + BATCH]
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in batch]).to(device)
            for path, i in zip(batch, net(x).argmax(1).tolist(), strict=True):
                rows.append((path, class_names[i]))
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([("image", "species"), *rows])


def _species(csv_path: Path) -> dict[str, str]:
    with open(csv_path, newline="") as f:
        return {row["image"]: row["species"] for row in csv.DictReader(f)}


def _make_run(data: Path, run_dir: Path) -> None:
    import torch

    from birdshield.models import create_model, save_checkpoint

    torch.manual_seed(0)
    names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    save_checkpoint(create_model(names), run_dir)


def _photos(data: Path, limit: int | None) -> list[Path]:
    photos = sorted(p for split in ("train", "valid", "test") for p in (data / split).rglob("*.jpg"))
    return photos[:limit] if limit else photos


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "kaggle-504")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each side's fastest run is kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for every side")
    parser.add_argument("--workers", type=int, default=None, help="our decoding threads (default: predict's)")
    parser.add_argument("--plain", nargs=3, metavar=("RUN", "LIST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(Path(args.plain[0]), Path(args.plain[1]), Path(args.plain[2]), args.threads, args.device)
        return
    photos = _photos(args.data, args.limit)
    if not photos:
        sys.exit(f"no photos under {args.data}/{{train,valid,test}}")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        run(args, photos, Path(tmp))


def run(args: argparse.Namespace, photos: list[Path], tmp: Path) -> None:
    import birdshield

    run_dir, list_file = tmp / "run", tmp / "photos.txt"
    _make_run(args.data, run_dir)
    list_file.write_text("".join(f"{p}\n" for p in photos))
    start = time.perf_counter()
    birdshield.load(run_dir, runtime="onnx")  # the one-off export, cached in the run directory
    export_s = time.perf_counter() - start

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    plain_env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    threads = ["--threads", str(args.threads)]
    ours = [sys.executable, "-m", "birdshield.cli", *threads, "predict", str(run_dir), *map(str, photos)]
    ours += ["--device", args.device, *(["--workers", str(args.workers)] if args.workers is not None else [])]
    plain = [
        sys.executable,
        __file__,
        *threads,
        "--device",
        args.device,
        "--plain",
        str(run_dir),
        str(list_file),
    ]
    sides = {
        "(a) plain timm + torchvision": (plain, plain_env),
        "(b) birdshield predict": ([*ours, "--runtime", "torch", "--out"], env),
        "(c) birdshield predict --runtime onnx": ([*ours, "--runtime", "onnx", "--out"], env),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (cmd, side_env) in sides.items():
            seconds, _ = timed([*cmd, str(tmp / f"{name[1]}.csv")], side_env)
            best[name] = min(best.get(name, seconds), seconds)

    print(
        f"photos: {len(photos)} from {args.data} (all splits); threads: {args.threads or 'default'}; "
        f"device {args.device}"
    )
    print("model: untrained head over the offline ImageNet tf_efficientnet_lite0 weights, one run directory")
    print(f"one-off ONNX export into the run directory: {export_s:.1f} s (cached; not part of (c))")
    print(f"{'side':40s} {'wall s':>8s} {'images/s':>9s} {'vs (a)':>7s}")
    baseline = best["(a) plain timm + torchvision"]
    for name, seconds in best.items():
        print(f"{name:40s} {seconds:8.1f} {len(photos) / seconds:9.1f} {baseline / seconds:6.2f}x")
    species = {key: _species(tmp / f"{key}.csv") for key in "abc"}
    for x, y in (("b", "a"), ("c", "b")):
        same = sum(species[x].get(image) == s for image, s in species[y].items())
        print(f"top-1 agreement ({x}) vs ({y}): {same}/{len(species[y])}")


if __name__ == "__main__":
    main()
