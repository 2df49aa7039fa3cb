"""Default `birdshield train` vs the plain timm + torchvision loop a user would write, on the same data.

Both start from the same offline ImageNet tf_efficientnet_lite0 weights and train on the same train split,
keep the best-valid epoch, and are scored on the test split. The plain loop is what a tutorial gives:
ImageFolder + transforms, full fine-tuning with Adam, default glibc allocator, NCHW. Each side runs in its
own process (the allocator setting is process-wide). Prints wall time and test accuracy side by side and
the time ratio.

    python benchmarks/bench_train.py [--data DIR] [--plain-epochs 6]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))


def plain_loop(data: Path, epochs: int) -> None:
    """The baseline, as a user would write it. Prints 'test_accuracy=...' at the end."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from birdshield.models import create_model

    torch.manual_seed(0)
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
    train_tf = transforms.Compose(
        [
            transforms.Resize(224),
            transforms.CenterCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), norm]
    )
    sets = {
        s: datasets.ImageFolder(data / s, train_tf if s == "train" else eval_tf)
        for s in ("train", "valid", "test")
    }
    loaders = {
        s: torch.utils.data.DataLoader(d, batch_size=32, shuffle=s == "train", num_workers=2)
        for s, d in sets.items()
    }
    net = create_model(
        sets["train"].classes
    ).backbone  # same weights; the plain loop normalises in transforms
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def accuracy(split: str) -> float:
        net.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders[split]:
                correct += (net(x).argmax(1) == y).sum().item()
        return correct / len(sets[split])

    best, best_state = -1.0, None
    for epoch in range(epochs):
        net.train()
        for x, y in loaders["train"]:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        valid = accuracy("valid")
        print(f"plain epoch {epoch + 1}: valid {valid:.3f}", flush=True)
        if valid > best:
            best, best_state = valid, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    print(f"test_accuracy={accuracy('test'):.4f}")


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout


def _csv_accuracy(path: Path) -> float:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(Path(r["image"]).parent.name == r["species"] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "birds-mini")
    parser.add_argument(
        "--plain-epochs", type=int, default=6, help="epochs of the plain loop (ours: its default)"
    )
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:
        plain_loop(args.data, args.plain_epochs)
        return

    with tempfile.TemporaryDirectory() as tmp:
        run, preds = Path(tmp) / "run", Path(tmp) / "preds.csv"
        ours_s, log = _timed(["birdshield", "train", str(args.data), "--out", str(run)])
        print(log)
        _timed(["birdshield", "predict", str(run), str(args.data / "test"), "--out", str(preds)])
        ours_acc = _csv_accuracy(preds)
    plain_s, log = _timed(
        [
            sys.executable,
            __file__,
            "--data",
            str(args.data),
            "--plain-only",
            "--plain-epochs",
            str(args.plain_epochs),
        ]
    )
    print(log)
    plain_acc = float(log.strip().rsplit("test_accuracy=", 1)[1])
    print(f"{'':28}{'wall s':>9}{'test acc':>10}")
    print(f"{'birdshield train (default)':28}{ours_s:9.0f}{ours_acc:10.1%}")
    print(f"{f'plain loop, {args.plain_epochs} epochs':28}{plain_s:9.0f}{plain_acc:10.1%}")
    print(
        f"time ratio plain/birdshield: {plain_s / ours_s:.2f}x; accuracy difference "
        f"{100 * (ours_acc - plain_acc):+.1f} points"
    )


if __name__ == "__main__":
    main()
