"""`birdshield data check`: what is in a dataset, and what is wrong with it."""

from __future__ import annotations

import argparse
import json

from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(sub, "data", help="dataset tools", description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="TOOL", help="which tool")
    c = options.command(
        dsub,
        "check",
        help="counts per class and split, unreadable files, missing classes, duplicates across splits",
        description="Print images per class and split, unreadable files, classes missing from a split, and "
        "images duplicated across splits (exact bytes, and near-duplicates by a perceptual hash). Exit "
        "status 1 when a problem is found.",
    )
    c.add_argument("root", help="dataset root (any layout `train` accepts)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument(
        "--threshold",
        type=int,
        default=4,
        help="max Hamming distance between 64-bit difference hashes for a near-duplicate",
    )
    c.add_argument("--seed", type=int, default=0, help="split seed for the one-folder layout")
    c.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data import check, format_check

    report = check(args.root, near_duplicate_threshold=args.threshold, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    return 1 if report["problems"] else 0
