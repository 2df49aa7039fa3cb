"""kaggle-504 end to end: birdshield's default training vs a frozen-feature logistic regression.

    python benchmarks/bench_fewshot.py [--data DIR] [--threads T] [--train-args "..."]

Data: ``$BIRDSHIELD_SHARED/data/kaggle-504`` (504 species of Kaggle BIRDS-525, 3 train / 1 valid / 1 test
photos each: few-shot at the real class count). Two sides on the same splits:

- birdshield: ``birdshield train DATA --out RUN`` with its defaults (plus ``--train-args``) as a whole
  process: wall time and peak RSS (wait4); then the saved model's top-1 and top-5 on the test split.
- baseline: multinomial logistic regression on the frozen offline ImageNet tf_efficientnet_lite0's pooled
  features of the train photos (L-BFGS, full batch; L2 strength chosen on the valid split from a grid),
  top-1 and top-5 on the test split.

Prints both with Clopper-Pearson 95% intervals (504 test photos: about +-4 points).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "kaggle-504", help="dataset root")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--train-args", default="", help="extra options for `birdshield train`")
    p.add_argument("--run", type=Path, help="use this trained run instead of training one")
    return p.parse_args(argv)


def features(model, samples):
    """Pooled features of the readable samples and their labels."""
    import torch

    from birdshield import data

    feats, labels = [], []
    with torch.inference_mode():
        for good, x, _ in data.read_batches([s.path for s in samples], model.image_size, 64):
            if x is not None:
                feats.append(model.forward_features(x))
                labels += [samples[i].label for i in good]
    return torch.cat(feats), torch.tensor(labels)


def topk(logits, y) -> tuple[int, int]:
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return int((top5[:, 0] == y).sum()), int((top5 == y[:, None]).any(1).sum())


def logistic_regression(xtr, ytr, n_classes: int, l2: float):
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xtr), ytr) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def baseline(dataset) -> tuple[int, int, int, float, float]:
    """(top-1 hits, top-5 hits, n, chosen l2, seconds) of the frozen-feature logistic regression."""
    import torch

    from birdshield.models import create_model

    t0 = time.perf_counter()
    model = create_model(list(dataset.class_names)).eval()
    (xtr, ytr), (xva, yva), (xte, yte) = (
        features(model, dataset.splits[s]) for s in ("train", "valid", "test")
    )
    n_classes = len(dataset.class_names)
    best = None
    for l2 in (1e-5, 1e-4, 1e-3, 1e-2):
        head = logistic_regression(xtr, ytr, n_classes, l2)
        with torch.no_grad():
            hits = topk(head(xva), yva)[0]
        if best is None or hits > best[0]:
            best = (hits, l2, head)
    with torch.no_grad():
        top1, top5 = topk(best[2](xte), yte)
    return top1, top5, len(yte), best[1], time.perf_counter() - t0


def trained(run: Path, dataset) -> tuple[int, int, int]:
    import torch

    from birdshield import data, models

    model = models.load_checkpoint(run).eval()
    samples = data.samples_for_model(dataset, "test", model.class_names)
    hit1 = hit5 = n = 0
    with torch.inference_mode():
        for good, x, _ in data.read_batches([s.path for s in samples], model.image_size, 64):
            if x is not None:
                a, b = topk(model(x), torch.tensor([samples[i].label for i in good]))
                hit1, hit5, n = hit1 + a, hit5 + b, n + len(good)
    return hit1, hit5, n


def train(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "birdshield.cli", "--threads", str(args.threads), "train", str(args.data)]
    cmd += ["--out", str(out), *shlex.split(args.train_args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"training failed: {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def line(name: str, top1: int, top5: int, n: int) -> str:
    from birdshield.stats import clopper_pearson

    def pct(k: int) -> str:
        lo, hi = clopper_pearson(k, n)
        return f"{k / n:6.1%} [{lo:.1%}, {hi:.1%}]"

    return f"  {name:<34} top-1 {pct(top1)}  top-5 {pct(top5)}  (n={n})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}: set BIRDSHIELD_SHARED or --data")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            wall, rss = train(args, run)  # first, in its own process: the parent holds no torch yet
            what = args.train_args or "(defaults)"
            print(f"birdshield train {what}: {wall / 60:.1f} min, peak RSS {rss:.0f} MB")
        import torch

        from birdshield import data

        if args.threads:
            torch.set_num_threads(args.threads)
        dataset = data.discover(args.data)
        ours = trained(run, dataset)
        top1, top5, n, l2, seconds = baseline(dataset)
    print(f"kaggle-504 test split, {len(dataset.class_names)} species")
    print(line("birdshield default training", *ours))
    print(line(f"logistic regression (l2 {l2:g}, {seconds:.0f} s)", top1, top5, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
