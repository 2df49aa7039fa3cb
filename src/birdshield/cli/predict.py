"""`birdshield predict`: species of image files and folders, as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..defenses.specs import DEFENSES
from . import options

if TYPE_CHECKING:
    from ..prediction_csv import PartialCSV, StdoutCSV

IMAGENET_BIRDS = "imagenet-birds"  # the keyword for the offline ImageNet bird model (models.IMAGENET_BIRDS)


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "predict",
        help="predict species for images; write CSV",
        description="Predict the species of image files and folders (recursively). The first argument may "
        f"be a run directory; without one (or with the keyword {IMAGENET_BIRDS}) the offline ImageNet "
        "backbone names the 59 ImageNet bird classes. Unreadable files get a row with their error instead "
        "of stopping the run. Rows are written to OUT.partial as they are made, so an interrupted run keeps "
        "them and continues with --resume; the complete CSV then replaces OUT at once. File names that are "
        "not valid UTF-8 are written as their original bytes (the rest of the CSV is UTF-8): in Python, "
        "os.fsencode(cell) gives the name back.",
    )
    p.add_argument(
        "paths", nargs="+", metavar="[RUN_DIR] PATH", help="run directory, then image files/folders"
    )
    p.add_argument(
        "--out",
        default="predictions.csv",
        help="CSV file to write ('-' for stdout); OUT.partial (and OUT.partial.json, what made its rows) "
        "holds the rows until every image has one",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: keep the rows in OUT.partial and predict the other images (same "
        "images, model, defence and --top-k; the CSV is the one an uninterrupted run writes)",
    )
    p.add_argument("--top-k", type=int, default=1, help="also write the next K-1 species and confidences")
    p.add_argument(
        "--format",
        choices=["csv", "grading"],
        default="csv",
        help="'csv': image,species,confidence[,species_k,confidence_k],error; 'grading': the original "
        "project's image,specie file sorted by numeric file name",
    )
    options.add_batch_size(p, 32)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="threads decoding the next batches while the model runs (0: decode between batches; more "
        "keep a GPU fed)",
    )
    options.add_device(p)
    options.add_runtime(p, "the model (the CSV is the same)")
    g = p.add_argument_group("defence (input transforms are applied before the model)")
    options.add_defense(
        g,
        list(DEFENSES),
        "Smoothing answers species ABSTAIN, with no confidence, when the vote over --samples noisy copies is "
        "not significant at --alpha; its confidences are vote shares (the next columns rank the classes by "
        "votes)",
    )
    g.add_argument("--samples", type=int, default=100, help="smoothing: noise samples per image")
    g.add_argument("--alpha", type=float, default=0.001, help="smoothing: significance level of a vote")
    g.add_argument("--seed", type=int, default=0, help="smoothing: noise seed")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import birdshield

    from .. import data, models
    from ..defenses import make_defense
    from ..prediction_csv import PartialCSV, StdoutCSV
    from ..runtime import tune_cpu_allocator

    smoothing = {
        "n": args.samples,
        "alpha": args.alpha,
        "seed": args.seed,
        "batch_size": max(args.batch_size, 100),
    }
    with options.usage_errors():
        defense = make_defense(args.defense, args.defense_param, **smoothing)
    if args.resume and args.out == "-":
        raise options.UsageError("--resume continues a file: give --out FILE")
    first, rest = args.paths[0], args.paths[1:]
    if first == IMAGENET_BIRDS:
        run_dir, inputs = None, rest
    elif models.is_run_dir(first):
        run_dir, inputs = first, rest
    else:
        run_dir, inputs = None, args.paths
    if not inputs:
        raise options.UsageError("no image files or folders given after the run directory")
    tune_cpu_allocator()
    model = birdshield.load(run_dir, runtime=args.runtime, device=args.device)
    skipped: list[Path] = []
    images = data.list_images(inputs, skipped)
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"skipped {len(skipped)} non-image file(s) in the folders ({names})", file=sys.stderr)
    settings = {"batch_size": args.batch_size, "workers": args.workers, "defense": defense}
    grading = args.format == "grading"
    if args.out == "-":
        out = StdoutCSV(sys.stdout.buffer, args.top_k, grading)
        _predict_into(out, model, images, args.top_k, **settings)
        out.finish()
    else:
        fingerprint = _settings(model, args, smoothing)
        with PartialCSV(Path(args.out), images, args.top_k, fingerprint, args.resume) as out:
            _predict_into(out, model, images, args.top_k, **settings)
            out.finish(grading)
        n_bad = len(out.bad)
        print(f"{out.done - n_bad} images predicted, {n_bad} unreadable -> {args.out}", file=sys.stderr)
    for image, error in out.bad:
        print(f"  unreadable: {image}: {error}", file=sys.stderr)
    return 0


def _predict_into(out: PartialCSV | StdoutCSV, model: object, images: list[Path], top_k: int, **kw) -> None:
    """Predict the images `out` has no row for yet, writing each batch's rows as soon as they are made."""
    from ..inference import iter_predictions

    for rows in iter_predictions(model, images, top_k=top_k, start=out.done, **kw):
        out.append(rows)


def _settings(model: object, args: argparse.Namespace, smoothing: dict) -> dict:
    """What makes the rows, saved beside OUT.partial: --resume continues only rows made the same way."""
    from ..evaluation.state import model_fingerprint

    return {
        "model": model_fingerprint(model),
        "top_k": args.top_k,
        "defense": [args.defense, args.defense_param],
        "smoothing": smoothing if args.defense == "smoothing" else None,
    }
