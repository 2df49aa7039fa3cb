"""`birdshield compare`: several evaluate/certify report folders side by side, with intervals."""

from __future__ import annotations

import argparse

from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "compare",
        help="several evaluate/certify reports side by side: one table and one plot",
        description="Read report.json (evaluate), certify.json (certify) or cv.json (train --cv: its pooled "
        "held-out photos) from each folder and print one "
        "Markdown table: clean accuracy, Gaussian-noise accuracy, ensemble robust accuracy per eps, transfer "
        "accuracy and certified accuracy, each with its 95% Clopper-Pearson interval. With --out, also "
        "writes compare.md and compare.png (ensemble accuracy vs eps, one line per report).",
    )
    p.add_argument(
        "reports", nargs="+", metavar="REPORT_DIR", help="folders written by evaluate, certify or train --cv"
    )
    p.add_argument(
        "--names",
        help="comma list of row names, one per folder (default: the folder names); folders given one name "
        "share a row, e.g. a model's evaluate report, its transfer report and its certify result",
    )
    p.add_argument("--radii", default="0.25,0.5", help="comma list of L2 radii for the certified columns")
    p.add_argument(
        "--paired",
        action="store_true",
        help="also compare each report with the first on the images both hold: per column (clean, ensemble "
        "at each eps, certified at each radius) the images right only in that report and only in the first, "
        "with an exact McNemar p-value. Use it to choose between two recipes measured on the same split, "
        "where their intervals overlap",
    )
    p.add_argument("--out", help="folder to write compare.md and compare.png into")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..reporting.compare import compare_markdown, load_reports, merge_rows, write_comparison

    names = options.split_list(args.names) if args.names else [None] * len(args.reports)
    with options.usage_errors():
        if len(names) != len(args.reports):
            raise ValueError(f"--names has {len(names)} names for {len(args.reports)} report folders")
        radii = tuple(float(r) for r in options.split_list(args.radii))
    reports = merge_rows(
        [load_reports(folder, name) for folder, name in zip(args.reports, names, strict=True)]
    )
    print(compare_markdown(reports, radii, args.paired), end="")
    if args.out:
        print(f"-> {write_comparison(reports, args.out, radii, args.paired)}")
    return 0
