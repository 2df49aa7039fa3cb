"""`birdshield <command>`: thin argument parsing over the modules; every option is explained in --help."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__

Handler = Callable[[argparse.Namespace], int]


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32, width=100)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .augment import AugmentConfig
    from .train import TrainConfig

    d, a = TrainConfig(data="", out=""), AugmentConfig()
    p = sub.add_parser(
        "train",
        help="train a classifier on image folders",
        formatter_class=_formatter,
        description="Train a bird-species classifier. Keeps the best-validation checkpoint in OUT "
        "(model.safetensors + birdshield.json), history.csv, curves.png and resume state.",
    )
    p.add_argument(
        "data",
        help="dataset root: Kaggle train/valid/test folders, CUB-200-2011, or one folder of "
        "species folders (split here)",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch", default=d.arch, help="timm model name; tf_efficientnet_lite0/1/2 have offline weights"
    )
    g.add_argument(
        "--weights", default=d.weights, help="'imagenet', a local .safetensors/.pth file, or 'none'"
    )
    g.add_argument("--image-size", type=int, default=None, help="input size (default: the weights' own size)")
    g.add_argument(
        "--depth",
        default=d.depth,
        help="what trains: 'probe' (head only, features cached), "
        "'last-N' (last N block groups + head) or 'full'",
    )
    g.add_argument(
        "--probe-epochs",
        type=int,
        default=d.probe_epochs,
        help="linear-probe epochs on cached "
        "features that warm-start the head (only without noise/geometric augmentation; 0 = off)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early stop after this many epochs without a better valid accuracy",
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate of the classifier head")
    g.add_argument("--backbone-lr", type=float, default=d.backbone_lr, help="learning rate of trained blocks")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument(
        "--warmup-epochs", type=float, default=d.warmup_epochs, help="linear LR warm-up, then cosine"
    )
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g = p.add_argument_group(
        "augmentation (the original project's recipe: --noise-max 0.1 --rotate 20 "
        "--shift 0.1 --shear 10 --zoom 0.1)"
    )
    g.add_argument("--no-hflip", dest="hflip", action="store_false", help="disable random horizontal flips")
    g.add_argument("--rotate", type=float, default=a.rotate, help="max rotation in degrees")
    g.add_argument("--shift", type=float, default=a.shift, help="max shift, fraction of the image size")
    g.add_argument("--shear", type=float, default=a.shear, help="max shear in degrees")
    g.add_argument("--zoom", type=float, default=a.zoom, help="max zoom in/out fraction")
    g.add_argument(
        "--noise-max",
        type=float,
        default=a.noise_max,
        help="Gaussian noise with a random std per image in [0, this], pixel units of [0,1] images",
    )
    g.add_argument(
        "--noise-sigma",
        type=float,
        default=a.noise_sigma,
        help="Gaussian noise of this fixed std (randomized-smoothing base model)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable bf16 autocast on CUDA")
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW memory layout (channels_last is faster on CPU and GPU)",
    )
    g.add_argument("--workers", type=int, default=d.workers, help="image-decoding worker processes")
    g.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image instead of skipping it with a warning",
    )
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from .augment import AugmentConfig
    from .train import TrainConfig, train

    aug = AugmentConfig(
        hflip=args.hflip,
        rotate=args.rotate,
        shift=args.shift,
        shear=args.shear,
        zoom=args.zoom,
        noise_max=args.noise_max,
        noise_sigma=args.noise_sigma,
    )
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        arch=args.arch,
        weights=None if args.weights == "none" else args.weights,
        image_size=args.image_size,
        depth=args.depth,
        probe_epochs=args.probe_epochs,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=aug,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        workers=args.workers,
        strict=args.strict,
        resume=args.resume,
    )
    train(cfg)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from .predict import IMAGENET_BIRDS

    p = sub.add_parser(
        "predict",
        help="predict species for images; write CSV",
        formatter_class=_formatter,
        description="Predict the species of image files and folders (recursively). The first "
        f"argument may be a run directory; without one (or with the keyword {IMAGENET_BIRDS}) the "
        "offline ImageNet backbone names the 59 ImageNet bird classes. Unreadable files get a row "
        "with their error instead of stopping the run.",
    )
    p.add_argument(
        "paths", nargs="+", metavar="[RUN_DIR] PATH", help="run directory, then image files/folders"
    )
    p.add_argument("--out", default="predictions.csv", help="CSV file to write ('-' for stdout)")
    p.add_argument("--top-k", type=int, default=1, help="also write the next K-1 species and confidences")
    p.add_argument(
        "--format",
        choices=["csv", "grading"],
        default="csv",
        help="'csv': image,species,"
        "confidence[,species_k,confidence_k],error; 'grading': the original project's image,specie "
        "file sorted by numeric file name",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from . import data
    from .models import META_FILE, load
    from .predict import IMAGENET_BIRDS, imagenet_birds_model, predict, to_csv, write_csv
    from .runtime import pick_device, tune_cpu_allocator

    tune_cpu_allocator()
    first, rest = Path(args.paths[0]), args.paths[1:]
    if args.paths[0] == IMAGENET_BIRDS:
        model, inputs = imagenet_birds_model(), rest
    elif (first / META_FILE).is_file() or (first / "model.safetensors").is_file():
        model, inputs = load(first), rest
    else:
        model, inputs = imagenet_birds_model(), args.paths
    if not inputs:
        raise data.DataError("no image files or folders given after the run directory")
    model = model.to(pick_device(args.device))
    paths = data.list_images(inputs)
    rows = predict(model, paths, top_k=args.top_k, batch_size=args.batch_size)
    bad = [r for r in rows if r["error"]]
    opts = {"top_k": args.top_k, "grading": args.format == "grading"}
    if args.out == "-":
        sys.stdout.write(to_csv(rows, **opts))
    else:
        write_csv(rows, Path(args.out), **opts)
        print(
            f"{len(rows) - len(bad)} images predicted, {len(bad)} unreadable -> {args.out}", file=sys.stderr
        )
    for r in bad:
        print(f"  unreadable: {r['image']}: {r['error']}", file=sys.stderr)
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools", formatter_class=_formatter)
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser(
        "check",
        help="counts per class and split, unreadable files, missing classes, duplicates across splits",
        formatter_class=_formatter,
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
    c.set_defaults(handler=_data_check)


def _data_check(args: argparse.Namespace) -> int:
    from .data import check, format_check

    report = check(args.root, near_duplicate_threshold=args.threshold, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    return 1 if report["problems"] else 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_predict, _add_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdshield",
        description="Train robust bird-species classifiers, "
        "attack them, defend them, and report honestly how robust they are.",
    )
    parser.add_argument("--version", action="version", version=f"birdshield {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .data import BadImageError, DataError
    from .models import CheckpointError

    try:
        return args.handler(args)
    except (DataError, BadImageError, CheckpointError, FileNotFoundError) as e:
        print(f"birdshield: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("birdshield: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
