"""`birdshield certify`: certified L2 robustness by randomized smoothing; a report folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import options

if TYPE_CHECKING:  # types only; `device` stays Any: no torch import in cli, even for types
    from ..distributed import Dist


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "certify",
        help="certified L2 robustness by randomized smoothing; write a report folder",
        description="Randomized smoothing (Cohen et al. 2019): CERTIFY each image of a split with Gaussian "
        "noise of std --sigma, giving the smoothed class and an L2 radius within which no perturbation can "
        "change it (or ABSTAIN), each wrong with probability at most --alpha. Radii are in pixel units of "
        "[0,1] images at the model's input size. A base model trained with `train --noise-sigma` at the "
        "same sigma certifies far more than a clean one. Writes OUT/certify.json (every image), certify.md "
        "and certified_accuracy.png, and prints the table; progress is saved per image, so an interrupted "
        "run continues with --resume.",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("data", help="dataset root (any layout `train` accepts)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--split", default="test", help="which split to certify")
    options.add_n_images(p, "certify")
    p.add_argument("--sigma", type=float, default=0.25, help="noise std, pixel units of [0,1] images")
    p.add_argument(
        "--selection-samples",
        type=int,
        default=100,
        metavar="N0",
        help="noise samples that choose the class (Cohen's n0)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=1000,
        metavar="N",
        help="noise samples that bound its probability (Cohen's n)",
    )
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument(
        "--min-radius",
        type=float,
        default=0.0,
        metavar="R",
        help="the smallest radius you care about: an image stops drawing noise (and counts as not certified) "
        "as soon as it could not reach R even if every remaining sample voted its way. Certificates are "
        "as valid as without it; the report's curve starts at R. Makes large --samples affordable",
    )
    options.add_batch_size(p, 100, "noisy copies per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the noise")
    options.add_device(p)
    options.add_runtime(
        p,
        "the forward passes (the noise is the same; votes can differ only by float rounding, so results "
        "are reproducible for a given seed and runtime)",
    )
    options.add_resume(p, "certification")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..defenses.smoothing import check_params
    from ..distributed import MEASURING_TIMEOUT, process_group

    params = {"sigma": args.sigma, "n0": args.selection_samples, "n": args.samples, "alpha": args.alpha}
    if args.min_radius < 0:
        raise options.UsageError(f"--min-radius must be >= 0, got {args.min_radius}")
    with options.usage_errors():
        check_params(**params, batch_size=args.batch_size)
    # one process unless under torchrun
    with process_group(args.device, MEASURING_TIMEOUT) as (shard, device):
        _run(args, params, shard, device)
    return 0


def _run(args: argparse.Namespace, params: dict[str, Any], shard: Dist, device: Any) -> None:
    import birdshield

    from .. import data, models
    from ..distributed import main_first
    from ..evaluation import certify_to_dir, prepare_out_dir
    from ..reporting.markdown import certify_table
    from ..runtime import preload, tune_cpu_allocator

    prepare_out_dir(args.out)  # an unwritable --out fails now, not after the certification
    tune_cpu_allocator()
    runtime = models.resolve_runtime(args.runtime, device, args.run_dir)
    # rank 0 first: it writes the run's ONNX export once, the others then read it
    model = main_first(shard, lambda: birdshield.load(args.run_dir, runtime=runtime, device=device))
    samples = data.samples_for_model(data.discover(args.data), args.split, model.class_names)
    samples = data.stratified_subset(samples, args.n_images, args.seed)
    header = {"run": str(args.run_dir), "data": str(args.data), "split": args.split, "runtime": runtime}
    preload("scipy.stats", "matplotlib.figure")  # the first bound, then the plot, while the forwards run
    result = certify_to_dir(
        model,
        samples,
        args.out,
        **params,
        seed=args.seed,
        batch_size=args.batch_size,
        min_radius=args.min_radius,
        resume=args.resume,
        header=header,
        shard=shard,
    )
    if not shard.main:
        return
    print(certify_table(result), end="")
    for im in result["images"]:
        if im.get("error"):
            print(f"  unreadable, left out: {im['image']}: {im['error']}", file=sys.stderr)
    print(f"-> {Path(args.out) / 'certify.json'}", file=sys.stderr)
