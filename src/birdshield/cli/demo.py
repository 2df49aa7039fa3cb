"""`birdshield demo`: the main job in one command: train briefly, evaluate robustness, point at the report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "demo",
        help="the main job in one command: train briefly, evaluate robustness, print where the report is",
        description="Train the default model briefly on DATA (linear probe on cached features, then a short "
        "fine-tune), evaluate it like `evaluate --quick` on the test split, and print where the report is. "
        "About 2 minutes on 2 CPU cores for birds-mini.",
    )
    p.add_argument("data", help="dataset root with train/valid/test (any layout `train` accepts)")
    p.add_argument(
        "--out", default="runs/demo", help="folder for the run (OUT/run) and the report (OUT/report)"
    )
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after the linear probe")
    options.add_n_images(p, "evaluate")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import birdshield

    from ..evaluation.config import PRESETS
    from ..training import config_from_options, train
    from .evaluate import evaluate_and_print

    run_dir, report_dir = Path(args.out) / "run", Path(args.out) / "report"
    print(f"== 1/2 train -> {run_dir}", flush=True)
    train(config_from_options(args.data, str(run_dir), epochs=args.epochs))
    print(f"== 2/2 evaluate --quick -> {report_dir}", flush=True)
    model = birdshield.load(run_dir)
    cfg = dataclasses.replace(PRESETS["quick"], n=args.n_images)
    evaluate_and_print(model, args.data, "test", cfg, str(report_dir), run_dir=run_dir)
    print(f"plots: accuracy_vs_eps.png, examples.png beside the report; model: {run_dir}")
    return 0
