"""PGD robust accuracy, `birdshield.evaluation` vs torchattacks: same model, images, eps, steps, step size.

    python benchmarks/bench_pgd.py [RUN_DIR] [--data DIR] [--n 150] [--steps 10] [--eps 1/255]
    python benchmarks/bench_pgd.py --whole-process [RUN_DIR] [--eps 2/255] ...

Model: ``birdshield.load(RUN_DIR)`` on the test split of ``--data`` with its true labels; without RUN_DIR
the offline ImageNet tf_efficientnet_lite0 (``birdshield.models.imagenet_model()``) on the birds-mini test
photos, each labelled with the model's own clean prediction (clean accuracy 100% by construction, so
robust accuracy is the fraction of predictions PGD cannot change). ``--data`` defaults to
``$BIRDSHIELD_SHARED/data/birds-mini``, else ``<repo>/../shared/data/birds-mini``.

Both sides get the same torch thread count (``--threads``; on a 2-core box shared with another busy
process use 1: every op waits for its slowest thread, measured up to 8x slower with 2), Linf eps,
``steps`` iterations, step size alpha = 2.5 * eps / steps (birdshield's default; equal to torchattacks'
eps/4 convention at 10 steps) and a uniform random start.

- ours: the `birdshield evaluate` path: glibc allocator fix, channels_last weights, clean pass under
  inference_mode, PGD only on clean-correct images with early stop (an image leaves the batch once
  fooled), plus evaluate's own one-batch sanity checks (they are part of what a user pays for).
- theirs: what a user writes with torchattacks: default allocator, NCHW, ``torchattacks.PGD(model, eps,
  alpha, steps, random_start=True)`` on every image, then one forward to score it.

The glibc allocator setting (``mallopt``) is process-wide and cannot be undone cleanly once memory has been
handed out, so each side runs in its own fresh subprocess (theirs with any MALLOC_* variables removed from
its environment). Images and labels are prepared once here and handed over in a temporary file; model
loading and a warm-up forward are not timed. Early stop can only find more adversarials (any iterate that
fools counts, not just the last), so robust accuracies may differ by an image or so.

``--whole-process`` times what a user waits for instead: each side a whole process, from start to exit,
with imports, model load and decoding of the photos (wall time, subprocess):

- ours: ``birdshield evaluate RUN DATA --attacks pgd --steps S --eps E --corruptions none --n-images N``
  (clean pass, sanity checks, report folder with its plots, everything evaluate does).
- theirs: a plain script: timm.create_model + load_state_dict(model.safetensors) with Normalize in front,
  PIL + torchvision Resize/CenterCrop/ToTensor, batches of ``--batch-size``, ``torchattacks.PGD`` on every
  image and one forward to score it (default allocator, NCHW).

Same images (the stratified subset evaluate picks), labels, eps, steps, step size and threads. Without
RUN_DIR the model is made here, untimed (``--keep-run DIR`` keeps it): the offline ImageNet lite0 with a
linear head fitted on its frozen features of the train split (a standard, non-robust run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _plain import plain_model, timed

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))


def _model(run_dir: str | None):
    from birdshield.models import imagenet_model, load_checkpoint

    return load_checkpoint(run_dir) if run_dir else imagenet_model().eval()


def prepare(args: argparse.Namespace, path: Path) -> None:
    """Read N test images at the model's size, label them, save (x, y) for the workers."""
    import torch

    from birdshield import data
    from birdshield.data import samples_for_model
    from birdshield.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # only this untimed preparation process
    model = _model(args.run_dir)
    dataset = data.discover(args.data)
    if args.run_dir:
        samples = samples_for_model(dataset, "test", model.class_names)
    else:
        samples = dataset.splits["test"]
    samples = data.stratified_subset(samples, args.n, args.seed)
    x = torch.stack([data.to_tensor(data.read_rgb(s.path), model.image_size) for s in samples])
    if args.run_dir:
        y = torch.tensor([s.label for s in samples])
    else:
        with torch.inference_mode():
            y = torch.cat([model(x[i : i + 32]).argmax(1) for i in range(0, len(x), 32)])
    torch.save({"x": x, "y": y}, path)


def ours(args: argparse.Namespace, x, y) -> tuple[float, float]:
    import torch

    from birdshield.evaluation import EvalConfig, evaluate
    from birdshield.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as `birdshield evaluate` does, before the model's buffers are allocated
    model = _model(args.run_dir).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x[:2])  # warm-up
    cfg = EvalConfig(
        attacks=("pgd",),
        eps=(args.eps,),
        steps={"pgd": args.steps},
        corruptions=(),
        noise_std=(),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)
    ]
    t0 = time.perf_counter()
    report = evaluate(model, batches, cfg)
    return report["ensemble"][0]["robust_accuracy"], time.perf_counter() - t0


def theirs(args: argparse.Namespace, x, y) -> tuple[float, float]:
    import torch
    import torchattacks

    model = _model(args.run_dir)
    with torch.inference_mode():
        model(x[:2])  # warm-up
    torch.manual_seed(args.seed)
    atk = torchattacks.PGD(
        model, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps, random_start=True
    )
    correct = 0
    t0 = time.perf_counter()
    for i in range(0, len(x), args.batch_size):
        xb, yb = x[i : i + args.batch_size], y[i : i + args.batch_size]
        adv = atk(xb, yb)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / len(x), time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t = torch.load(args.tensors, weights_only=True)
    acc, seconds = (ours if args.worker == "ours" else theirs)(args, t["x"], t["y"])
    print(json.dumps({"robust_accuracy": acc, "seconds": seconds, "n": len(t["y"])}))


def plain_script(args: argparse.Namespace, run_dir: Path, list_file: Path) -> None:
    """The whole-process `theirs`: what a user writes with timm, torchvision and torchattacks."""
    import torch
    import torchattacks
    from PIL import Image

    model, preprocess, names = plain_model(run_dir, args.threads)
    items = [line.split("\t") for line in list_file.read_text().splitlines()]
    torch.manual_seed(args.seed)
    atk = torchattacks.PGD(
        model, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps, random_start=True
    )
    correct = 0
    for start in range(0, len(items), args.batch_size):
        batch = items[start : start + args.batch_size]
        x = torch.stack([preprocess(Image.open(path).convert("RGB")) for path, _ in batch])
        y = torch.tensor([names.index(label) for _, label in batch])
        adv = atk(x, y)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
    print(json.dumps({"robust_accuracy": correct / len(items), "n": len(items)}))


def whole_process(args: argparse.Namespace, tmp: Path) -> None:
    """Both sides as whole processes: wall times, robust accuracies, the ratio."""
    from birdshield import data
    from birdshield.attacks import format_eps
    from birdshield.models import read_metadata

    run_dir = Path(args.run_dir or args.keep_run or tmp / "run")
    if not (run_dir / "model.safetensors").is_file():
        from _probe import make_probe_run

        print(f"made {run_dir} (linear probe), {make_probe_run(Path(args.data), run_dir):.0f} s", flush=True)
    names = read_metadata(run_dir)["class_names"]
    samples = data.samples_for_model(data.discover(args.data), "test", names)
    chosen = data.stratified_subset(samples, args.n, args.seed)
    list_file, out = tmp / "images.txt", tmp / "report"
    list_file.write_text("".join(f"{s.path}\t{names[s.label]}\n" for s in chosen))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    eps = format_eps(args.eps)
    ours = [
        sys.executable, "-m", "birdshield.cli", "--threads", str(args.threads), "evaluate", str(run_dir),
        args.data, "--attacks", "pgd", "--steps", str(args.steps), "--eps", eps, "--corruptions", "none",
        "--n-images", str(args.n), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
        "--out", str(out),
    ]  # fmt: skip
    theirs = [
        sys.executable, __file__, "--threads", str(args.threads), "--eps", eps, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--plain-script", str(run_dir),
        str(list_file),
    ]  # fmt: skip
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        t_theirs, stdout = timed(theirs, env)
        acc_theirs = json.loads(stdout.strip().splitlines()[-1])["robust_accuracy"]
        t_ours, _ = timed(ours, env)
        best = {
            "theirs": min(best.get("theirs", t_theirs), t_theirs),
            "ours": min(best.get("ours", t_ours), t_ours),
        }
    report = json.loads((out / "report.json").read_text())
    acc_ours = report["ensemble"][0]["robust_accuracy"]
    n = len(chosen)
    print(f"command (ours): {shlex.join(ours)}")
    print(
        f"{n} images of {args.data} (test), Linf eps {eps}, {args.steps} steps of 2.5*eps/steps, "
        f"seed {args.seed}"
    )
    print(
        f"threads: {args.threads or 'default'}; "
        f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print(
        f"  {'torchattacks.PGD script':26s} robust accuracy {100 * acc_theirs:5.1f}%  "
        f"wall {best['theirs']:7.1f} s"
    )
    print(
        f"  {'birdshield evaluate':26s} robust accuracy {100 * acc_ours:5.1f}%  wall {best['ours']:7.1f} s"
        f"  (clean {100 * report['clean_accuracy']:.1f}%, evaluation {report['seconds']:.1f} s in-process)"
    )
    gap = abs(acc_ours - acc_theirs) * n
    print(f"  robust accuracies {'agree' if gap <= 1 + 1e-9 else 'DIFFER'} ({gap:.0f} image(s) apart)")
    print(f"  whole-process time ratio theirs/ours: {best['theirs'] / best['ours']:.2f}x")
    attacks = sum(r["seconds"] for r in report["results"])
    rest = report["seconds"] - attacks
    print(
        f"  where ours goes (last run): start-up, imports, model load and report files "
        f"{t_ours - report['seconds']:.1f} s; decoding, clean pass and sanity checks {rest:.1f} s; "
        f"PGD {attacks:.1f} s"
    )


def _spawn(which: str, tensors: Path, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    cmd = [sys.executable, __file__, *argv, "--worker", which, "--tensors", str(tensors)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from birdshield.attacks import parse_eps

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", help="birdshield run directory (default: offline ImageNet lite0)")
    p.add_argument("--data", default=str(SHARED / "data" / "birds-mini"), help="dataset root (test split)")
    p.add_argument("--n", type=int, default=150, help="images (stratified subset of the test split)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=parse_eps, default=1 / 255, help="Linf radius, e.g. 1/255")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads on both sides (0 = default; 1 on a busy box)"
    )
    p.add_argument("--whole-process", action="store_true", help="time whole processes (see the module doc)")
    p.add_argument(
        "--repeats", type=int, default=1, help="--whole-process rounds; each side's fastest is kept"
    )
    p.add_argument("--keep-run", help="--whole-process without RUN_DIR: where to make (or find) the model")
    p.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    p.add_argument("--tensors", help=argparse.SUPPRESS)
    p.add_argument("--plain-script", nargs=2, metavar=("RUN", "LIST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.plain_script:
        return plain_script(args, *map(Path, args.plain_script))
    if args.whole_process:
        with tempfile.TemporaryDirectory(prefix="bench_pgd_") as tmp:
            return whole_process(args, Path(tmp))
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        tensors = Path(tmp) / "xy.pt"
        prepare(args, tensors)
        res = {which: _spawn(which, tensors, argv) for which in ("theirs", "ours")}
    n = res["ours"]["n"]
    print(
        f"{n} images, Linf eps {args.eps * 255:g}/255, {args.steps} steps of 2.5*eps/steps, seed {args.seed}"
    )
    for which, label in (("theirs", "torchattacks.PGD"), ("ours", "birdshield evaluate")):
        r = res[which]
        print(f"  {label:20s} robust accuracy {100 * r['robust_accuracy']:5.1f}%  wall {r['seconds']:7.1f} s")
    gap = abs(res["ours"]["robust_accuracy"] - res["theirs"]["robust_accuracy"]) * n
    print(f"  robust accuracies {'agree' if gap <= 1 + 1e-9 else 'DIFFER'} ({gap:.0f} image(s) apart)")
    print(f"  time ratio theirs/ours: {res['theirs']['seconds'] / res['ours']['seconds']:.1f}x")


if __name__ == "__main__":
    main()
