"""`birdshield train`: fine-tune a classifier on image folders, optionally against noise or adversaries."""

from __future__ import annotations

import argparse

from ..training.config import FLAT_FIELDS, METHODS, PRESETS, AdvConfig, AugmentConfig, TrainConfig
from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d, a, adv = TrainConfig(data="", out=""), AugmentConfig(), AdvConfig()
    p = options.command(
        sub,
        "train",
        help="train a classifier on image folders",
        description="Train a bird-species classifier. Keeps the best-validation checkpoint in OUT "
        "(model.safetensors + birdshield.json), history.csv, curves.png and resume state.",
    )
    p.add_argument(
        "data",
        help="dataset root: Kaggle train/valid/test folders, CUB-200-2011, or one folder of species folders "
        "(split here)",
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
        help="what trains: 'probe' (head only, features cached), 'last-N' (last N block groups + head) or "
        "'full'",
    )
    g.add_argument(
        "--probe-epochs",
        type=int,
        default=d.probe_epochs,
        help="linear-probe epochs on cached features of plain images that warm-start the head (skipped "
        "with noise or geometric augmentation unless training is adversarial; 0 = off)",
    )
    g.add_argument(
        "--feature-cache",
        default=d.feature_cache,
        metavar="DIR",
        help="folder of the probe's on-disk feature caches, reused by later runs on the same images and "
        "backbone (default: $BIRDSHIELD_CACHE or ~/.cache/birdshield; 'none': keep features in memory)",
    )
    g.add_argument(
        "--fast-cpu",
        choices=["auto", "on", "off"],
        default=d.fast_cpu,
        help="train only the cached linear probe on plain images, no fine-tuning: 'auto' does so on a CPU "
        "from 10,000 training images (BIRDS-525 in well under an hour on 2 cores instead of many hours)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early stop after this many epochs without a better validation score",
    )
    options.add_batch_size(g, d.batch_size, "images per training step")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer, help="optimiser")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate of the classifier head")
    g.add_argument("--backbone-lr", type=float, default=d.backbone_lr, help="learning rate of trained blocks")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="decoupled weight decay")
    g.add_argument(
        "--warmup-epochs", type=float, default=d.warmup_epochs, help="linear LR warm-up, then cosine"
    )
    g.add_argument(
        "--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy label smoothing"
    )
    g.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help="validate and keep an exponential moving average of the weights with this decay per step "
        "(e.g. 0.99; curbs robust overfitting); 0 keeps the raw weights",
    )
    g.add_argument(
        "--teacher",
        default=d.teacher,
        metavar="RUN",
        help="a trained run of the same species (e.g. a standard model): its class probabilities on the "
        "clean images replace the labels in the loss (distillation; with --adv, ARD-style). Or train one "
        "first, in OUT/teacher (a few CPU minutes): 'auto', noise training (--noise-max 0.2) on this "
        "run's --arch; 'standard', the default recipe (what `birdshield train DATA` trains), the more "
        "accurate clean model",
    )
    g.add_argument(
        "--tta-flip",
        action=argparse.BooleanOptionalAction,
        default=d.tta_flip,
        help="the saved model averages its logits over the image and its mirror image when it predicts "
        "(test-time augmentation; twice the inference cost); attacks differentiate through it, so robustness "
        "is measured with it. Training validates the single view",
    )
    g.add_argument(
        "--consistency",
        type=float,
        default=d.consistency,
        metavar="L",
        help="with --noise-sigma: consistency regularisation of weight L (Jeong & Shin 2020; 5-20 is usual): "
        "two noisy copies per image must agree, which raises the smoothed model's certified radii; twice the "
        "training time and memory per step (halve --batch-size if memory runs short)",
    )
    g = p.add_argument_group(
        "augmentation (the original project's recipe: --noise-max 0.1 --rotate 20 --shift 0.1 --shear 10 "
        "--zoom 0.1)"
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
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seeds the split, initialisation, order and noise"
    )
    options.add_device(g)
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable bf16 autocast on CUDA")
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW memory layout (channels_last is faster on CPU and GPU)",
    )
    g.add_argument("--workers", type=int, default=d.workers, help="image-decoding worker processes")
    g.add_argument(
        "--decode-cache",
        choices=["auto", "on", "off"],
        default=d.decode_cache,
        help="decode every image once into a uint8 cache at the input size ($BIRDSHIELD_CACHE/decoded, "
        "about 150 KB an image at 224 px) and read pixels every epoch instead of decoding files: what keeps "
        "a GPU busy. auto: on when training on a GPU",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image instead of skipping it with a warning",
    )
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT (same options)")
    g = p.add_argument_group(
        "cross-validation (choose a recipe without the test split; the test split is never read)"
    )
    g.add_argument(
        "--cv",
        type=int,
        default=None,
        metavar="K",
        help="instead of one run: pool the train and valid images into K folds (stratified, seeded by "
        "--seed), train the recipe K times, each time measuring the fold it never saw, and write OUT/cv.md, "
        "cv.json and the plot cv.png (per fold and pooled, with intervals; with a --teacher it trains, also "
        "the teacher's clean accuracy) beside each fold's run in OUT/fold-I; K runs' time. Resumable: run "
        "the same command again",
    )
    g.add_argument(
        "--cv-eps",
        default=None,
        metavar="LIST",
        help="with --cv: eps (Linf) at which each held-out fold is attacked with the quick ensemble, e.g. "
        "2/255,4/255 (default: those two for adversarial recipes, none otherwise: clean accuracy only)",
    )
    g.add_argument(
        "--cv-folds",
        default=None,
        metavar="LIST",
        help="with --cv: run only these folds now, e.g. 0,1 (numbered from 0); the summary covers the folds "
        "done so far",
    )
    g = p.add_argument_group("robust training (every defence is judged by `birdshield evaluate`)")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named recipe; explicit options still win: "
        + options.literal("; ".join(f"{name}: {preset.doc}" for name, preset in sorted(PRESETS.items()))),
    )
    g.add_argument(
        "--adv",
        dest="adv_method",
        choices=METHODS,
        default=adv.method,
        help="adversarial training: pgd (Madry), fgsm (from a random start, Wong et al., with the "
        "catastrophic-overfitting stop), trades",
    )
    g.add_argument("--adv-eps", type=_eps, default=adv.eps, help="Linf radius, e.g. 4/255")
    g.add_argument("--adv-steps", type=int, default=adv.steps, help="attack steps per batch (pgd, trades)")
    g.add_argument(
        "--adv-step-size", type=_eps, default=None, help="attack step (default eps/2; fgsm 1.25*eps)"
    )
    g.add_argument(
        "--adv-warmup-epochs",
        type=float,
        default=adv.warmup_epochs,
        help="grow eps linearly from 0 over these epochs",
    )
    g.add_argument(
        "--clean-weight",
        type=float,
        default=adv.clean_weight,
        help="weight of the clean loss in the clean/adversarial mix (pgd, fgsm)",
    )
    g.add_argument("--trades-beta", type=float, default=adv.trades_beta, help="TRADES robustness weight")
    g.add_argument(
        "--select",
        choices=["clean", "robust"],
        default=adv.select,
        help="best checkpoint by clean validation accuracy or by PGD accuracy at --adv-eps on the validation "
        "split",
    )
    p.set_defaults(handler=run)
    return p


def _eps(text: str) -> float:
    from ..attacks.eps import parse_eps

    return parse_eps(text)


def apply_preset(parser: argparse.ArgumentParser, name: str) -> None:
    """A preset changes the train command's defaults, so options given explicitly still win."""
    parser.set_defaults(**PRESETS[name].overrides)


def run(args: argparse.Namespace) -> int:
    from ..models import check_arch
    from ..training import config_from_options, train

    given = {k: v for k, v in vars(args).items() if k in FLAT_FIELDS}
    if given.get("weights") == "none":
        given["weights"] = None
    with options.usage_errors():
        cfg = config_from_options(args.data, args.out, **given)
        check_arch(cfg.arch)  # before any image is read
        if args.cv is None:
            if args.cv_eps or args.cv_folds:
                raise ValueError("--cv-eps and --cv-folds go with --cv K")
            train(cfg)
            return 0
        eps = [_eps(e) for e in options.split_list(args.cv_eps)] if args.cv_eps else None
        folds = [int(f) for f in options.split_list(args.cv_folds)] if args.cv_folds else None
    from ..training.cv import cross_validate

    default_eps = (2 / 255, 4 / 255) if cfg.adv.active else ()
    with options.usage_errors():  # a fold number or fold count out of range
        cross_validate(cfg, args.cv, eps=default_eps if eps is None else eps, folds=folds)
    return 0
