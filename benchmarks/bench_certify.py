"""Certification time per image: Cohen's CERTIFY as a plain torch loop vs `birdshield certify` (torch and
onnxruntime), whole processes, with the certified accuracy of each.

    python benchmarks/bench_certify.py [RUN_DIR] [--data DIR] [--n-images N] [--samples N] [--threads T]

Images: a seeded, class-stratified subset of ``--n-images`` photos of the test split of ``--data`` (default
``$BIRDSHIELD_SHARED/data/birds-mini``, else ``<repo>/../shared/data/birds-mini``), the subset `birdshield
certify --n-images` picks. Model: RUN_DIR, else one made here (``--keep-run DIR`` keeps it for the next
run): the offline ImageNet tf_efficientnet_lite0 with a linear head fitted on its frozen features of the
train split and of two copies noised at --sigma (so the smoothed model certifies something), about two
minutes on a CPU, not timed.

Each side is a whole process (subprocess, wall time from start to exit, imports and model load included),
divided by the number of images:

- (a) plain: Cohen et al.'s CERTIFY as its authors' code does it, run as a user would: timm.create_model +
  load_state_dict(model.safetensors), Normalize in front, PIL + torchvision Resize/CenterCrop/ToTensor,
  ``torch.manual_seed``, then per image ``x.repeat(100, 1, 1, 1) + torch.randn_like(batch) * sigma`` batches
  under ``torch.no_grad`` (NCHW, default glibc allocator: MALLOC_* variables removed from its
  environment), n0 samples choose the class, n more bound it (Clopper-Pearson, scipy), radius
  sigma * Phi^-1(pA_lower).
- (b) ``birdshield certify RUN DATA --n-images N --runtime torch``.
- (c) the same with ``--runtime onnx`` (the default on a CPU). Its one-off export into RUN/model.onnx is done
  (and timed) before the runs, so (c) measures what every later run pays.
- (d) with ``--min-radius R``: (c) (or (b) on a GPU) stopping each image as soon as it cannot reach R. Its
  certified accuracy at radii of at least R is (c)'s exactly; below R it is not measured ("-").

``--device cuda`` runs every side on a GPU (the plain loop moves its model and batches there; ours get
``--device``); (c) is left out there, onnxruntime being a CPU runtime here.

All sides get the same ``--threads`` (0: each library's default), sigma, n0, n, alpha and batch size. The
noise differs between (a) and ours (another RNG), so certified accuracies agree within sampling, not
exactly; (b) and (c) draw the same noise. ``--repeats`` runs the sides round-robin R times and keeps each
side's fastest run (a busy machine only ever makes a run slower).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _plain import plain_model, timed

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
RADII = (0.0, 0.25, 0.5, 1.0)


def plain_certify(args: argparse.Namespace, run_dir: Path, list_file: Path, out: Path) -> None:
    """Side (a): Cohen's CERTIFY, written as its reference code is."""
    import math

    import numpy as np
    import torch
    from PIL import Image
    from scipy.stats import beta, norm

    model, preprocess, names = plain_model(run_dir, args.threads)
    model = model.to(args.device)
    torch.manual_seed(args.seed)

    def sample_noise(x: torch.Tensor, num: int) -> np.ndarray:
        counts = np.zeros(len(names), dtype=int)
        with torch.no_grad():
            for _ in range(math.ceil(num / args.batch_size)):
                this_batch = min(args.batch_size, num)
                num -= this_batch
                batch = x.repeat((this_batch, 1, 1, 1))
                noise = torch.randn_like(batch) * args.sigma
                predictions = model(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=len(names))
        return counts

    records = []
    for line in list_file.read_text().splitlines():
        path, label = line.split("\t")
        x = preprocess(Image.open(path).convert("RGB")).to(args.device)
        c_hat = int(sample_noise(x, args.selection_samples).argmax())
        n_a = int(sample_noise(x, args.samples)[c_hat])
        p_lower = beta.ppf(args.alpha, n_a, args.samples - n_a + 1) if n_a else 0.0
        radius = args.sigma * norm.ppf(p_lower) if p_lower >= 0.5 else None
        prediction = None if radius is None else names[c_hat]
        records.append(
            {"image": path, "prediction": prediction, "correct": prediction == label, "radius": radius}
        )
    out.write_text(json.dumps({"images": records}))


def _samples(args: argparse.Namespace, run_dir: Path) -> list[tuple[str, str]]:
    """(path, species) of the images `birdshield certify --n-images` picks."""
    from birdshield import data
    from birdshield.models import read_metadata

    names = read_metadata(run_dir)["class_names"]
    samples = data.samples_for_model(data.discover(args.data), args.split, names)
    return [(str(s.path), names[s.label]) for s in data.stratified_subset(samples, args.n_images, args.seed)]


def _accuracies(records: list[dict], below: float = 0.0) -> list[float | None]:
    """Certified accuracy at RADII: correct with a radius of at least r (abstentions are never correct);
    None below `below` (a --min-radius run does not measure those)."""
    ok = [r for r in records if not r.get("error")]
    return [
        None if radius < below else sum(r["correct"] and r["radius"] >= radius for r in ok) / max(1, len(ok))
        for radius in RADII
    ]


def _run_dir(args: argparse.Namespace, tmp: Path) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    run_dir = Path(args.keep_run) if args.keep_run else tmp / "run"
    if not (run_dir / "model.safetensors").is_file():
        from _probe import make_probe_run

        seconds = make_probe_run(args.data, run_dir, args.sigma, noisy_copies=2)
        print(f"made {run_dir}: linear probe on clean + 2 noisy copies (sigma {args.sigma}), {seconds:.0f} s")
    return run_dir


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    p.add_argument("run_dir", nargs="?", help="birdshield run directory (default: a probe made here)")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "birds-mini")
    p.add_argument("--split", default="test")
    p.add_argument("--n-images", type=int, default=6, help="images certified by each side")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--selection-samples", type=int, default=100, help="Cohen's n0")
    p.add_argument("--samples", type=int, default=1000, help="Cohen's n")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = default)")
    p.add_argument("--repeats", type=int, default=1, help="rounds; each side's fastest run is kept")
    p.add_argument("--keep-run", help="where to make (or find) the benchmark's model when no RUN_DIR")
    p.add_argument("--min-radius", type=float, default=0.0, help="adds side (d): ours with --min-radius R")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for every side")
    p.add_argument("--plain", nargs=3, metavar=("RUN", "LIST", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        return plain_certify(args, *map(Path, args.plain))
    with tempfile.TemporaryDirectory(prefix="bench_certify_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    import birdshield

    run_dir, list_file = _run_dir(args, tmp), tmp / "images.txt"
    chosen = _samples(args, run_dir)
    list_file.write_text("".join(f"{path}\t{label}\n" for path, label in chosen))
    start = time.perf_counter()
    birdshield.load(run_dir, runtime="onnx")  # the one-off export, cached in the run directory
    export_s = time.perf_counter() - start

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    plain_env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    shared = [
        f"--sigma={args.sigma}", f"--selection-samples={args.selection_samples}", f"--samples={args.samples}",
        f"--alpha={args.alpha}", f"--batch-size={args.batch_size}", f"--seed={args.seed}",
    ]  # fmt: skip
    ours = [
        sys.executable, "-m", "birdshield.cli", "--threads", str(args.threads), "certify", str(run_dir),
        str(args.data), "--split", args.split, "--n-images", str(args.n_images), *shared,
    ]  # fmt: skip
    ours += ["--device", args.device]
    plain = [sys.executable, __file__, *shared, "--threads", str(args.threads), "--device", args.device]
    plain += ["--plain", str(run_dir)]
    cpu = args.device == "cpu"
    sides = {
        "(a) plain torch loop of Cohen's CERTIFY": ([*plain, str(list_file), str(tmp / "a.json")], plain_env),
        "(b) birdshield certify --runtime torch": (
            [*ours, "--runtime", "torch", "--out", str(tmp / "b")],
            env,
        ),
    }
    if cpu:
        sides["(c) birdshield certify --runtime onnx"] = (
            [*ours, "--runtime", "onnx", "--out", str(tmp / "c")],
            env,
        )
    if args.min_radius:
        runtime = "onnx" if cpu else "torch"
        early = [*ours, "--runtime", runtime, "--min-radius", str(args.min_radius), "--out", str(tmp / "d")]
        sides[f"(d) ... --runtime {runtime} --min-radius {args.min_radius:g}"] = (early, env)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (cmd, side_env) in sides.items():
            seconds, _ = timed(cmd, side_env)
            best[name] = min(best.get(name, seconds), seconds)
    records = {"a": json.loads((tmp / "a.json").read_text())["images"]}
    for key in "bcd":
        if (tmp / key / "certify.json").is_file():
            records[key] = json.loads((tmp / key / "certify.json").read_text())["images"]
    _print(args, run_dir, chosen, export_s, best, records)


def _print(
    args: argparse.Namespace,
    run_dir: Path,
    chosen: list[tuple[str, str]],
    export_s: float,
    best: dict[str, float],
    records: dict[str, list[dict]],
) -> None:
    n = len(chosen)
    print(
        f"{n} images of {args.data} ({args.split}), sigma {args.sigma}, n0 {args.selection_samples}, "
        f"n {args.samples}, alpha {args.alpha}, batches of {args.batch_size}; "
        f"threads: {args.threads or 'default'}"
    )
    print(f"model: {run_dir}; one-off ONNX export into it: {export_s:.1f} s (cached; not part of (c))")
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    header = "".join(f" {'r=' + str(r):>7s}" for r in RADII)
    print(f"{'side':42s} {'wall s':>8s} {'s/image':>8s} {'vs (a)':>7s}{header}  (certified accuracy)")
    baseline = best["(a) plain torch loop of Cohen's CERTIFY"]
    for name, seconds in best.items():
        below = args.min_radius if name.startswith("(d)") else 0.0
        cells = _accuracies(records[name[1]], below)
        accuracies = "".join(f" {'-':>7s}" if a is None else f" {100 * a:6.1f}%" for a in cells)
        print(f"{name:42s} {seconds:8.1f} {seconds / n:8.2f} {baseline / seconds:6.2f}x{accuracies}")
    if "c" in records:
        same = sum(
            x["prediction"] == y["prediction"] for x, y in zip(records["b"], records["c"], strict=True)
        )
        print(f"same smoothed prediction (b) vs (c): {same}/{n}")
    if "d" in records:
        full = records["c" if "c" in records else "b"]
        kept = [
            (x["radius"] or 0) < args.min_radius or x["radius"] == y["radius"]
            for x, y in zip(full, records["d"], strict=True)
        ]
        drawn = sum(r.get("samples", args.samples) for r in records["d"])
        print(
            f"(d) gives every certificate of at least {args.min_radius:g} that the full run gives: "
            f"{'yes' if all(kept) else 'NO'}; noise samples drawn {drawn:,} of {n * args.samples:,}"
        )


if __name__ == "__main__":
    main()
