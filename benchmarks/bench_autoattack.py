"""Reference cross-check: the reference AutoAttack (APGD-CE then APGD-T) vs birdshield's own cascade of the
same attacks, on the same model, images, eps, iterations and target classes; robust accuracy and wall time.

    python benchmarks/bench_autoattack.py RUN_DIR [--data DIR] [--n-images 150] [--eps 2/255] [--steps 100]
        [--targets 3] [--full]

The reference is fra31/auto-attack from ``$BIRDSHIELD_SHARED/peers/auto-attack`` (default ../shared), put on
sys.path, never copied. Both sides get the tensors decoded once by birdshield (same pixels). If the
reference finds a lower robust accuracy than ours by more than one image, our evaluation misses
adversarial examples: that is what this benchmark is for. `--full` also runs birdshield's `--full` preset
ensemble (FGSM, PGD-50 x5, APGD-CE, APGD-T, Square-5000) at the same eps, which must not be above the
reference either.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("--data", default=str(SHARED / "data" / "birds-mini"), help="dataset root")
    p.add_argument("--split", default="test", help="dataset split")
    p.add_argument("--n-images", type=int, default=150, help="seeded, stratified subset size")
    p.add_argument("--eps", default="2/255", help="Linf radius")
    p.add_argument("--steps", type=int, default=100, help="iterations of APGD-CE and APGD-T")
    p.add_argument("--targets", type=int, default=3, help="APGD-T target classes (AutoAttack's default: 9)")
    p.add_argument("--batch-size", type=int, default=50, help="images per attack batch")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--full", action="store_true", help="also run birdshield's --full ensemble")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (both sides run there)")
    p.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="what runs our --full ensemble's passes without gradients (Square's 5000 queries): as "
        "`evaluate --runtime`; 'auto' is onnxruntime on a CPU",
    )
    return p.parse_args(argv)


def load(args: argparse.Namespace):
    import torch

    import birdshield
    from birdshield import data
    from birdshield.runtime import pick_device

    device = pick_device(args.device)
    model = birdshield.load(args.run_dir, device=device)
    samples = data.samples_for_model(data.discover(args.data), args.split, model.class_names)
    samples = data.stratified_subset(samples, args.n_images, seed=0)
    x = torch.stack([data.to_tensor(data.read_rgb(s.path), model.image_size) for s in samples])
    return model, x.to(device), torch.tensor([s.label for s in samples], device=device)


def reference(model, x, y, eps: float, steps: int, targets: int, bs: int) -> tuple[float, float]:
    """Robust accuracy and seconds of the reference AutoAttack (custom version: APGD-CE, APGD-T)."""
    sys.path.insert(0, str(SHARED / "peers" / "auto-attack"))
    from autoattack import AutoAttack

    aa = AutoAttack(
        model,
        norm="Linf",
        eps=eps,
        version="custom",
        attacks_to_run=["apgd-ce", "apgd-t"],
        device=x.device,
        verbose=False,
        seed=0,
    )
    aa.apgd.n_iter, aa.apgd.n_restarts = steps, 1
    aa.apgd_targeted.n_iter, aa.apgd_targeted.n_target_classes = steps, targets
    t0 = time.perf_counter()
    x_adv = aa.run_standard_evaluation(x, y, bs=bs)
    seconds = time.perf_counter() - t0
    return robust_accuracy(model, x_adv, y), seconds


def robust_accuracy(model, x_adv, y) -> float:
    import torch

    with torch.inference_mode():
        return float((model(x_adv).argmax(1) == y).float().mean())


def ours(model, x, y, eps: float, steps: int, targets: int, bs: int, preset: str | None = None, forward=None):
    """(ensemble robust accuracy, seconds) of birdshield's cascade on the same tensors."""
    from birdshield.evaluation import PRESETS, EvalConfig, evaluate

    if preset:
        cfg = dataclasses.replace(PRESETS[preset], eps=(eps,), corruptions=(), noise_std=(), batch_size=bs)
    else:
        cfg = EvalConfig(
            attacks=("apgd-ce", "apgd-t"),
            eps=(eps,),
            steps={"apgd-ce": steps, "apgd-t": steps},
            n_target_classes=targets,
            corruptions=(),
            noise_std=(),
            batch_size=bs,
        )
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)]
    t0 = time.perf_counter()
    report = evaluate(model, batches, cfg, forward_model=forward)
    return report["ensemble"][0]["robust_accuracy"], time.perf_counter() - t0, report["flags"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from birdshield.attacks import parse_eps
    from birdshield.runtime import tune_cpu_allocator

    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    eps = parse_eps(args.eps)
    model, x, y = load(args)
    n = len(y)
    attacks = f"APGD-CE {args.steps} + APGD-T {args.steps} x {args.targets} targets"
    say = functools.partial(print, flush=True)  # each line as soon as it is known: --full takes an hour
    say(f"{n} images, Linf eps {args.eps}, {attacks}")
    ref_acc, ref_s = reference(model, x, y, eps, args.steps, args.targets, args.batch_size)
    say(f"  reference AutoAttack: robust {ref_acc:.1%} ({round(ref_acc * n)}/{n})  {ref_s:.1f} s")
    our_acc, our_s, flags = ours(model, x, y, eps, args.steps, args.targets, args.batch_size)
    say(
        f"  birdshield cascade:   robust {our_acc:.1%} ({round(our_acc * n)}/{n})  {our_s:.1f} s  "
        f"flags: {[f['flag'] for f in flags] or 'none'}"
    )
    gap = round((ref_acc - our_acc) * n)
    say(f"  reference - ours: {gap:+d} images; time ours/reference {our_s / ref_s:.2f}x")
    if args.full:
        import birdshield
        from birdshield.models import resolve_runtime

        onnx = resolve_runtime(args.runtime, args.device, args.run_dir) == "onnx"
        twin = birdshield.load(args.run_dir, runtime="onnx", device=args.device) if onnx else None
        full_acc, full_s, flags = ours(model, x, y, eps, 0, 0, args.batch_size, "full", twin)
        say(
            f"  birdshield --full:    robust {full_acc:.1%} ({round(full_acc * n)}/{n})  {full_s:.1f} s  "
            f"flags: {[f['flag'] for f in flags] or 'none'}"
        )
    behind = round((our_acc - ref_acc) * n)
    if behind > 1:
        print(f"WARNING: the reference fooled {behind} more images: our evaluation misses attacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
