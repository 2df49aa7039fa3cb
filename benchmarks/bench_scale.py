"""Does birdshield's cost per image stay flat as the data set grows to BIRDS-525's size?

    python benchmarks/bench_scale.py [--sizes 10 40] [--species 525] [--steps check,train,fast,...]
                                     [--work DIR] [--device auto] [--workers 0 2] [--threads T]
                                     [--pipelines decode cache]

Builds, once per size K (kept under ``--work`` for later runs), a synthetic Kaggle-layout tree of
``--species`` species x K training photos (+1 valid, +1 test each) from the real photos under
``$BIRDSHIELD_SHARED/data`` (birds-mini and kaggle-504): each file is a distinct JPEG, a random 80-100%
crop of a source photo re-encoded at 224 px (Kaggle's size), so no cache of file bytes can flatter a size.
Labels are arbitrary (species i draws its photos from the sources in turn): only cost is measured here.

Then, per size, each step as a whole process (wall time, and peak RSS of its largest process from wait4):

- check:    ``birdshield data check TREE`` (every split; seconds per image over all photos)
- train:    ``birdshield train TREE --epochs 1 --fast-cpu off`` (probe on cached features + one fine-tune
            epoch of the last blocks; per train+valid image), with a fresh feature cache, once per input
            pipeline of ``--pipelines``: ``decode`` (the loader's workers decode every epoch) and ``cache``
            (``--decode-cache on``: decoded once into a uint8 cache, which the step fills first)
- robust:   ``birdshield train TREE --preset robust-gpu --epochs 1`` without its teacher, once per pipeline
            (a GPU step: adversarial training costs hours per epoch of BIRDS-525 on a CPU)
- fast:     ``birdshield train TREE --fast-cpu on`` (the path ``auto`` takes on a CPU from 10,000 training
            images; per train+valid image), with a fresh feature cache
- predict:  ``birdshield predict RUN TREE/train`` (per image), once per ``--workers`` value
- evaluate: ``birdshield evaluate RUN TREE --quick --n-images 50`` (a fixed subset: its wall time should
            not grow with the tree)

Prints seconds per image and peak RSS at each size and the large/small ratios (targets: cost <= 1.15x,
RSS <= 1.3x), and the projected wall time of the fast path on the full BIRDS-525 (84,635 train + 2,625
valid photos: a line through the two sizes' wall times). With CUDA, each step also prints the GPU's mean
utilisation (nvidia-smi, sampled every 200 ms) and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
BIRDS_525 = 84_635 + 2_625  # the photos training reads on the full data set (train + valid)
STEPS = ("check", "train", "robust", "fast", "predict", "evaluate")
PIPELINES = {"decode": ["--decode-cache", "off"], "cache": ["--decode-cache", "on"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs=2, default=[10, 40], help="training photos per species")
    p.add_argument("--species", type=int, default=525, help="species in the synthetic tree")
    p.add_argument(
        "--steps",
        default=",".join(s for s in STEPS if s != "robust"),
        help=f"comma-separated subset of {','.join(STEPS)} (robust, a GPU step, is not in the default)",
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "birdshield-scale")
    p.add_argument("--source", type=Path, default=SHARED / "data", help="folder of real photos to re-encode")
    p.add_argument("--device", default="auto", help="device of train/predict/evaluate")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="decoding workers to compare: train's --workers (processes) and predict's (threads); "
        "default: each command's own",
    )
    p.add_argument("--threads", type=int, default=0, help="birdshield --threads (0: torch's default)")
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=sorted(PIPELINES),
        default=["decode", "cache"],
        help="training input pipelines to compare (train and robust steps)",
    )
    return p.parse_args(argv)


def _reencode(job: tuple[str, str, int]) -> None:
    from PIL import Image

    source, target, seed = job
    rng = random.Random(seed)
    with Image.open(source) as img:
        img = img.convert("RGB")
        w, h = img.size
        f = rng.uniform(0.8, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).resize((224, 224), Image.Resampling.BILINEAR)
        img.save(target, quality=rng.randint(85, 95))


def build_tree(source: Path, root: Path, species: int, k: int) -> Path:
    """root/{train,valid,test}/SPECIES NNN/*.jpg, reused when a finished tree of this shape is there."""
    done = root / "tree.json"
    shape = {"species": species, "k": k, "source": str(source)}
    if done.is_file() and json.loads(done.read_text()) == shape:
        return root
    photos = sorted(p for p in source.rglob("*.jpg") if "/peers/" not in str(p))
    if not photos:
        raise SystemExit(f"no photos under {source}: set BIRDSHIELD_SHARED or --source")
    jobs, i = [], 0
    for s in range(species):
        for split, n in (("train", k), ("valid", 1), ("test", 1)):
            folder = root / split / f"SPECIES {s:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                jobs.append((str(photos[i % len(photos)]), str(folder / f"{j:03d}.jpg"), i))
                i += 1
    with Pool(os.cpu_count()) as pool:
        pool.map(_reencode, jobs, chunksize=64)
    done.write_text(json.dumps(shape))
    return root


class GpuSampler:
    """Mean GPU utilisation while a step runs (nvidia-smi every 200 ms); None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.proc = None
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError:
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def stop(self) -> float | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        return sum(self.samples) / len(self.samples) if self.samples else None


def timed(cmd: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, float, float | None]:
    """Run `cmd`; (wall seconds, peak RSS in MB of its largest process, mean GPU utilisation or None)."""
    gpu = GpuSampler()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    util = gpu.stop()
    if os.waitstatus_to_exitcode(status) not in ok:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, util


def count(root: Path, split: str | None = None) -> int:
    return sum(1 for _ in (root / split if split else root).rglob("*.jpg"))


def measure(args: argparse.Namespace, tree: Path, out: Path) -> dict[str, dict]:
    """Per step: wall, rss, util, images (what the per-image cost divides by)."""
    cli = [sys.executable, "-m", "birdshield.cli", "--threads", str(args.threads)]
    dev = ["--device", args.device]
    n_all, n_train = count(tree), count(tree, "train")
    n_fit = n_train + count(tree, "valid")
    run = out / "fast-run"
    variants = [(f"-w{w}", ["--workers", str(w)]) for w in args.workers or []] or [("", [])]
    train = [*cli, "train", str(tree), *dev, "--feature-cache"]
    plan = {"check": ([*cli, "data", "check", str(tree)], n_all)}
    for tag, workers in variants:
        for pipeline in args.pipelines:
            cmd = [*train, str(out / f"cache{tag}-{pipeline}"), "--out", str(out / f"run-{pipeline}")]
            cmd += ["--fast-cpu", "off", "--epochs", "1", *workers, *PIPELINES[pipeline]]
            plan[f"train{tag}-{pipeline}"] = (cmd, n_fit)
    for pipeline in args.pipelines:
        cmd = [*train, str(out / f"cache-robust-{pipeline}"), "--out", str(out / f"robust-{pipeline}")]
        cmd += ["--preset", "robust-gpu", "--epochs", "1", "--teacher=", *PIPELINES[pipeline]]
        plan[f"robust-{pipeline}"] = (cmd, n_fit)
    plan["fast"] = ([*train, str(out / "cache-fast"), "--out", str(run), "--fast-cpu", "on"], n_fit)
    for tag, workers in variants:
        cmd = [*cli, "predict", str(run), str(tree / "train"), "--out", str(out / "p.csv"), *dev]
        plan[f"predict{tag}"] = ([*cmd, *workers], n_train)
    cmd = [*cli, "evaluate", str(run), str(tree), "--quick", "--n-images", "50", *dev]
    plan["evaluate"] = ([*cmd, "--out", str(out / "e")], 50)
    steps = set(args.steps.split(","))
    results = {}
    for name, (cmd, images) in plan.items():
        if name.split("-")[0] not in steps:
            continue
        if not run.is_dir() and name.startswith(("predict", "evaluate")):
            raise SystemExit(f"step {name} needs the fast step's run ({run}): add 'fast' to --steps")
        # data check exits 1 when it finds problems: the re-encoded crops of one source photo in two
        # splits are near-duplicates once the tree outgrows the sources (as it should say)
        wall, rss, util = timed(cmd, out / f"{name}.log", (0, 1) if name == "check" else (0,))
        results[name] = {"wall": wall, "rss_mb": rss, "util": util, "images": images}
        gpu = f"  GPU {util:.0f}%" if util is not None else ""
        print(f"  {name:<12} {wall:8.1f} s  {images / wall:8.1f} img/s  {rss:7.0f} MB{gpu}", flush=True)
    return results


def report(small: dict, large: dict, sizes: list[int]) -> None:
    print(f"\n{'step':<12} {'ms/img K=' + str(sizes[0]):>14} {'ms/img K=' + str(sizes[1]):>14} "
          f"{'cost ratio':>11} {'RSS ratio':>10}")  # fmt: skip
    for name in small:
        a, b = small[name], large[name]
        per_a, per_b = 1000 * a["wall"] / a["images"], 1000 * b["wall"] / b["images"]
        rss = b["rss_mb"] / a["rss_mb"]
        print(f"{name:<12} {per_a:14.2f} {per_b:14.2f} {per_b / per_a:10.2f}x {rss:9.2f}x")
    if "fast" in small:
        a, b = small["fast"], large["fast"]
        slope = (b["wall"] - a["wall"]) / (b["images"] - a["images"])
        projected = a["wall"] + slope * (BIRDS_525 - a["images"])
        print(f"\nprojected fast-path training on BIRDS-525 ({BIRDS_525:,} train+valid photos): "
              f"{projected / 60:.0f} min (fixed {max(a['wall'] - slope * a['images'], 0):.0f} s + "
              f"{1000 * slope:.1f} ms per photo)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # torch is imported in a child only: a child's peak RSS (wait4) starts from its parent's at fork time
    probe = "import torch; print(torch.__version__, 'CUDA:', torch.cuda.is_available())"
    torch_line = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    print(f"torch {torch_line}, {os.cpu_count()} CPUs, device {args.device}")
    results = []
    for k in args.sizes:
        t0 = time.perf_counter()
        tree = build_tree(args.source, args.work / f"tree-{args.species}x{k}", args.species, k)
        print(f"K={k}: {count(tree):,} photos in {tree} (built or found in {time.perf_counter() - t0:.0f} s)")
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            results.append(measure(args, tree, Path(tmp)))
    report(*results, args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
