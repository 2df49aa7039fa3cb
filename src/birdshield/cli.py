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
    _add_robust_training(p)
    p.set_defaults(handler=_train)


def _add_robust_training(p: argparse.ArgumentParser) -> None:
    from .attacks import parse_eps
    from .defenses.adversarial import METHODS, AdvConfig
    from .train import PRESETS

    adv = AdvConfig()
    g = p.add_argument_group("robust training (every defence is judged by `birdshield evaluate`)")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named recipe; explicit options still win: "
        + "; ".join(f"{name}: {doc}" for name, (doc, _) in sorted(PRESETS.items())),
    )
    g.add_argument(
        "--adv",
        dest="adv_method",
        choices=METHODS,
        default=adv.method,
        help="adversarial training: pgd (Madry), "
        "fgsm (from a random start, Wong et al., with the catastrophic-overfitting stop), trades",
    )
    g.add_argument("--adv-eps", type=parse_eps, default=adv.eps, help="Linf radius, e.g. 4/255")
    g.add_argument("--adv-steps", type=int, default=adv.steps, help="attack steps per batch (pgd, trades)")
    g.add_argument(
        "--adv-step-size", type=parse_eps, default=None, help="attack step (default eps/2; fgsm 1.25*eps)"
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
        help="best checkpoint by "
        "clean validation accuracy or by PGD accuracy at --adv-eps on the validation split",
    )


def _from_args(cls: type, args: argparse.Namespace, prefix: str = "", **given: object) -> object:
    """Build a config dataclass from the parsed options of the same names (`prefix` + name first)."""
    import dataclasses

    values = dict(given)
    for f in dataclasses.fields(cls):
        for dest in (prefix + f.name, f.name):
            if f.name not in values and hasattr(args, dest):
                values[f.name] = getattr(args, dest)
    return cls(**values)


def _train(args: argparse.Namespace) -> int:
    from .augment import AugmentConfig
    from .defenses.adversarial import AdvConfig
    from .train import TrainConfig, train

    weights = None if args.weights == "none" else args.weights
    aug, adv = _from_args(AugmentConfig, args), _from_args(AdvConfig, args, prefix="adv_")
    train(_from_args(TrainConfig, args, weights=weights, augment=aug, adv=adv))
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
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="'onnx': onnxruntime on RUN_DIR/model.onnx (exported on first use, again when the weights "
        "change); the same CSV",
    )
    _add_defense_options(p)
    p.set_defaults(handler=_predict)


TRANSFORM_HELP = "jpeg: JPEG re-compression; bits: bit-depth reduction; median: median filter"


def _add_defense_choice(g: argparse._ArgumentGroup, names: list[str], what: str) -> None:
    from .defenses.transforms import DEFENSE_PARAMS

    g.add_argument("--defense", choices=["none", *names], default="none", help=what)
    g.add_argument(
        "--defense-param",
        *(["--sigma"] if "smoothing" in names else []),
        type=float,
        default=None,
        metavar="X",
        help="the defence's parameter (default): "
        + ", ".join(f"{name} {DEFENSE_PARAMS[name][0]} ({DEFENSE_PARAMS[name][1]})" for name in names),
    )


def _add_defense_options(p: argparse.ArgumentParser) -> None:
    from .defenses.transforms import DEFENSE_PARAMS

    g = p.add_argument_group("defence (input transforms are applied before the model)")
    _add_defense_choice(
        g,
        list(DEFENSE_PARAMS),
        TRANSFORM_HELP + "; smoothing: randomized smoothing, a vote over --n noisy copies (confidence = "
        "vote share) that answers species ABSTAIN, with no confidence, when the vote is not significant "
        "at --alpha (the next columns then rank the classes by votes)",
    )
    g.add_argument("--n", type=int, default=100, help="smoothing: noise samples per image")
    g.add_argument("--alpha", type=float, default=0.001, help="smoothing: significance level of a vote")
    g.add_argument("--seed", type=int, default=0, help="smoothing: noise seed")


def _defended_predict(model: object, paths: list[Path], args: argparse.Namespace) -> list[dict]:
    """predict's rows through --defense; smoothing predicts by itself from its votes."""
    from .defenses import DEFENSE_PARAMS, Smoothed, make_transform
    from .defenses.smoothing import predict_rows
    from .predict import predict

    if args.defense == "smoothing":
        sigma = DEFENSE_PARAMS["smoothing"][1] if args.defense_param is None else args.defense_param
        smoothed = Smoothed(model, sigma, batch_size=max(args.batch_size, 100))
        return predict_rows(smoothed, paths, n=args.n, alpha=args.alpha, top_k=args.top_k, seed=args.seed)
    defense = None if args.defense == "none" else make_transform(args.defense, args.defense_param)
    return predict(model, paths, top_k=args.top_k, batch_size=args.batch_size, defense=defense)


def _predict(args: argparse.Namespace) -> int:
    from . import data, load
    from .export import OnnxClassifier
    from .models import META_FILE
    from .predict import IMAGENET_BIRDS, imagenet_birds_model, to_csv, write_csv
    from .runtime import pick_device, tune_cpu_allocator

    tune_cpu_allocator()
    first, rest = Path(args.paths[0]), args.paths[1:]
    device = pick_device(args.device)
    if args.paths[0] == IMAGENET_BIRDS:
        model, inputs = imagenet_birds_model(), rest
    elif (first / META_FILE).is_file() or (first / "model.safetensors").is_file():
        model, inputs = load(first, device, runtime=args.runtime), rest
    else:
        model, inputs = imagenet_birds_model(), args.paths
    if not inputs:
        raise data.DataError("no image files or folders given after the run directory")
    if args.runtime == "onnx" and not isinstance(model, OnnxClassifier):
        model = OnnxClassifier.from_model(model, device)
    model = model.to(device)
    paths = data.list_images(inputs)
    try:
        rows = _defended_predict(model, paths, args)
    except ValueError as e:  # a bad --defense-param, --n or --alpha
        print(f"birdshield predict: error: {e}", file=sys.stderr)
        return 2
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    from .defenses.transforms import DEFENSE_PARAMS

    p = sub.add_parser(
        "export",
        help="export a run to ONNX for onnxruntime",
        formatter_class=_formatter,
        description="Write RUN_DIR's model as ONNX: [0,1] RGB NCHW images at the model's size in, logits "
        "out, normalisation inside. Class names, image size and preprocessing are in the file's metadata.",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--static-batch", type=int, default=None, metavar="N", help="fix the batch size at N (default: any)"
    )
    p.add_argument(
        "--defense",
        choices=["none", *DEFENSE_PARAMS],
        default="none",
        help="an input transform inside the graph: bits or median (jpeg and smoothing cannot be one graph)",
    )
    p.add_argument(
        "--defense-param",
        type=float,
        default=None,
        metavar="X",
        help="the defence's parameter (default): bits bits (4), median kernel (3)",
    )
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx, graph_transform
    from .models import load

    try:
        if args.static_batch is not None and args.static_batch < 1:
            raise ValueError(f"--static-batch must be >= 1, got {args.static_batch}")
        graph_transform(args.defense, args.defense_param)  # refuse jpeg/smoothing before loading the model
        model = load(args.run_dir)
        path = export_onnx(
            model,
            args.out,
            dynamic_batch=args.static_batch is None,
            batch_size=args.static_batch or 1,
            defense=args.defense,
            defense_param=args.defense_param,
        )
    except ValueError as e:  # jpeg/smoothing, a bad parameter, or a CheckpointError
        print(f"birdshield export: error: {e}", file=sys.stderr)
        return 2
    shape = f"batch {args.static_batch or 'any'}, {model.image_size}px"
    print(f"{path}: {len(model.class_names)} classes, {shape}, defence {args.defense}")
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


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _prepared_model(run_dir: str, device: object) -> object:
    import torch

    from .models import load

    model = load(run_dir, device)
    # channels_last is ~20% faster for conv nets on CPU (MEASUREMENTS.md); converting the weights suffices
    return model.to(memory_format=torch.channels_last) if str(device) == "cpu" else model


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from .defenses.transforms import TRANSFORMS

    p = sub.add_parser(
        "evaluate",
        help="clean, corruption and worst-case adversarial accuracy; write a report folder",
        formatter_class=_formatter,
        description="Measure a trained run on a dataset split: clean accuracy, accuracy under common "
        "corruptions, and robust accuracy per eps under an attack ensemble (an image is robust only if "
        "it survives every attack; only images still correct go on to the next attack). Sanity checks "
        "for gradient masking and broken evaluations are printed and stored. Writes OUT/"
        "report.json, report.md, accuracy_vs_eps.png and examples.png. Options left out take the preset's "
        "value (--quick: fgsm, pgd-10, apgd-ce-20, square-200 at 1,2,4/255 Linf, for a CPU; --full: "
        "fgsm, pgd-50 x5 restarts, apgd-ce-100, apgd-t-100, square-5000 at 1,2,4,8/255, for a GPU).",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("data", help="dataset root (any layout `train` accepts)")
    p.add_argument("--split", default="test", help="which split to evaluate")
    p.add_argument("--out", required=True, help="report folder to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="eval_preset", action="store_const", const="quick", help="CPU-sized")
    g.add_argument(
        "--full",
        dest="eval_preset",
        action="store_const",
        const="full",
        help="AutoAttack strength, for a GPU",
    )
    p.set_defaults(eval_preset="quick")  # not "preset": train owns that name in main()
    g = p.add_argument_group("attacks (default: the preset's)")
    g.add_argument(
        "--attacks", help="comma list in cascade order, cheapest first, e.g. fgsm,pgd,apgd-ce,square"
    )
    g.add_argument("--eps", help="comma list, e.g. 1/255,2/255 (L2 default 0.25,0.5,1)")
    g.add_argument("--norm", choices=["linf", "l2"], help="threat model (square is Linf-only, cw L2-only)")
    g.add_argument("--steps", type=int, help="iterations of every iterative attack")
    g.add_argument("--restarts", type=int, help="PGD random restarts")
    g.add_argument("--square-queries", type=int, help="Square attack queries per image")
    g.add_argument("--surrogate", help="run directory of a surrogate model: adds a transfer attack")
    g.add_argument(
        "--independent",
        action="store_true",
        help="run every attack on all clean-correct images (per-attack numbers standalone; slower)",
    )
    g = p.add_argument_group("corruptions (default: all, severities 1,3,5, noise std 0.05,0.1,0.2)")
    g.add_argument("--corruptions", help="comma list of corruption names, or 'none' (also drops --noise-std)")
    g.add_argument("--severities", help="comma list of severities 1..5")
    g.add_argument("--noise-std", help="comma list of explicit Gaussian noise stds, or 'none'")
    g = p.add_argument_group("run")
    g.add_argument("--n", type=int, help="evaluate a seeded, class-stratified subset of N images")
    g.add_argument("--seed", type=int, help="seed of the subset, attacks and noise (default 0)")
    g.add_argument("--batch-size", type=int, help="images per chunk (default 32)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g = p.add_argument_group("defence (an input transform before the model, attacked through it)")
    _add_defense_choice(
        g,
        list(TRANSFORMS),
        TRANSFORM_HELP + ". Every attack sees the transformed model, with the transform's gradient "
        "replaced by the identity (BPDA), so the numbers show what the transform really buys. Randomized "
        "smoothing is measured by `certify` instead",
    )
    p.set_defaults(handler=_evaluate)


def _eval_overrides(args: argparse.Namespace) -> dict:
    """EvalConfig fields the user set; ValueError for bad names or numbers."""
    from .attacks import CORRUPTIONS, get_attack, parse_eps
    from .evaluate import DEFAULT_L2_EPS

    o: dict = {}
    if args.attacks:
        o["attacks"] = tuple(_split_list(args.attacks))
        for name in o["attacks"]:
            get_attack(name)
    if args.norm:
        o["norm"] = args.norm
    if args.eps:
        o["eps"] = tuple(parse_eps(e) for e in _split_list(args.eps))
    elif args.norm == "l2":
        o["eps"] = DEFAULT_L2_EPS
    if args.steps is not None:
        o["steps"], o["default_steps"] = {}, args.steps
    for key in ("restarts", "square_queries", "n", "seed", "batch_size"):
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    if args.corruptions == "none":
        o["corruptions"], o["noise_std"] = (), ()
    elif args.corruptions:
        o["corruptions"] = tuple(_split_list(args.corruptions))
        unknown = set(o["corruptions"]) - set(CORRUPTIONS)
        if unknown:
            raise ValueError(f"unknown corruption(s) {sorted(unknown)}; valid: {', '.join(CORRUPTIONS)}")
    if args.severities:
        o["severities"] = tuple(int(s) for s in _split_list(args.severities))
    if args.noise_std:
        o["noise_std"] = (
            () if args.noise_std == "none" else tuple(float(s) for s in _split_list(args.noise_std))
        )
    o["independent"] = args.independent
    return o


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from . import data
    from .defenses import Defended, make_transform
    from .evaluate import PRESETS, evaluate_samples, samples_for_model
    from .report import format_summary, write_report
    from .runtime import pick_device, progress, tune_cpu_allocator

    tune_cpu_allocator()  # 2-3x faster CPU forward/backward; must come before the big allocations
    try:  # every option is checked before the model is loaded
        overrides = _eval_overrides(args)
        transform = None if args.defense == "none" else make_transform(args.defense, args.defense_param)
    except ValueError as e:
        print(f"birdshield evaluate: error: {e}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    model = _prepared_model(args.run_dir, device)
    if transform is not None:
        model = Defended(model, transform)
    if args.surrogate:
        overrides["surrogate"] = _prepared_model(args.surrogate, device)
    cfg = dataclasses.replace(PRESETS[args.eval_preset], **overrides)
    samples = samples_for_model(data.discover(args.data), args.split, model.class_names)
    bar = progress(None, desc="evaluate", unit="img")

    def on_progress(stage: str, done: int, total: int | None) -> None:
        bar.total, bar.n = total, done
        bar.set_description_str(stage)

    examples: list = []
    result = evaluate_samples(model, samples, cfg, on_progress, examples)
    bar.close()
    result["model"]["run_dir"], result["split"] = str(args.run_dir), args.split
    if args.surrogate:
        result["config"]["surrogate"] = str(args.surrogate)
    md = write_report(result, args.out, examples)
    print(format_summary(result))
    for bad in result["bad_images"]:
        print(f"  unreadable, left out: {bad['path']}: {bad['error']}", file=sys.stderr)
    print(f"\n{result['n']} images in {result['seconds']:.0f} s; report: {md}")
    return 0


def _add_attack(sub: argparse._SubParsersAction) -> None:
    from .attacks import ATTACKS

    p = sub.add_parser(
        "attack",
        help="write adversarial versions of image files (PNG) and a CSV of what changed",
        formatter_class=_formatter,
        description="Attack image files and folders (recursively) with one attack. Each adversarial image "
        "is written losslessly as PNG under OUT with the same path relative to the folder given (a file "
        "given alone: its name), suffix .png, at the model's input resolution (shorter side resized, centre "
        "crop: the exact pixels the model judged). OUT/attack.csv lists per image the label used, the clean "
        "and adversarial prediction and confidence (of the written 8-bit PNG) and the perturbation's "
        "Linf/L2 size in [0,1] pixel units. Untargeted label: the parent folder's name if it is one of the "
        "model's classes, else the model's own clean prediction. Input files are never overwritten.",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs and attack.csv")
    p.add_argument("--attack", default="pgd", choices=[a for a in ATTACKS if a != "transfer"])
    p.add_argument("--eps", default="4/255", help="radius, e.g. 4/255 (Linf) or 0.5 (L2)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--steps", type=int, help="iterations (default: the attack's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", metavar="CLASS", help="targeted attack towards this class name")
    p.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_false",
        help="keep optimising after the first success (more confident adversarials; early stop gives "
        "the first, least-changed point that fools the model)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(handler=_attack)


def _attack(args: argparse.Namespace) -> int:
    from .attacks import parse_eps
    from .data import DataError
    from .evaluate import attack_files
    from .runtime import pick_device, tune_cpu_allocator

    tune_cpu_allocator()
    model = _prepared_model(args.run_dir, pick_device(args.device))
    try:
        rows = attack_files(
            model,
            args.paths,
            args.out,
            attack=args.attack,
            eps=parse_eps(args.eps),
            batch_size=args.batch_size,
            norm=args.norm,
            steps=args.steps,
            seed=args.seed,
            target=args.target,
            early_stop=args.early_stop,
        )
    except DataError:
        raise  # main() reports it
    except ValueError as e:  # unknown target class, untargetable attack, bad eps
        print(f"birdshield attack: error: {e}", file=sys.stderr)
        return 2
    bad = [r for r in rows if r["error"]]
    fooled = sum(1 for r in rows if r["success"] == 1)
    print(f"{len(rows) - len(bad)} images attacked, {fooled} fooled, {len(bad)} unreadable -> {args.out}")
    for r in bad:
        print(f"  unreadable: {r['image']}: {r['error']}", file=sys.stderr)
    return 0


def _add_certify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certify",
        help="certified L2 robustness by randomized smoothing; write a report folder",
        formatter_class=_formatter,
        description="Randomized smoothing (Cohen et al. 2019): CERTIFY each image of a split with "
        "Gaussian noise of std --sigma, giving the smoothed class and an L2 radius within which no "
        "perturbation can change it (or ABSTAIN), each wrong with probability at most --alpha. Radii are "
        "in pixel units of [0,1] images at the model's input size. A base model trained with "
        "`train --noise-sigma` at the same sigma certifies far more than a clean one. Writes OUT/"
        "certify.json (every image), certify.md and certified_accuracy.png, and prints the table.",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("data", help="dataset root (any layout `train` accepts)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--split", default="test", help="which split to certify")
    p.add_argument(
        "--n-images", type=int, default=None, help="certify a seeded, class-stratified subset (None: all)"
    )
    p.add_argument("--sigma", type=float, default=0.25, help="noise std, pixel units of [0,1] images")
    p.add_argument("--n0", type=int, default=100, help="noise samples that choose the class")
    p.add_argument("--n", type=int, default=1000, help="noise samples that bound its probability")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument("--batch-size", type=int, default=100, help="noisy copies per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(handler=_certify)


def _certify(args: argparse.Namespace) -> int:
    from . import data
    from .data import stratified_subset
    from .defenses.smoothing import certify_dataset, write_report
    from .evaluate import samples_for_model
    from .runtime import pick_device, tune_cpu_allocator

    tune_cpu_allocator()
    model = _prepared_model(args.run_dir, pick_device(args.device))
    samples = samples_for_model(data.discover(args.data), args.split, model.class_names)
    samples = stratified_subset(samples, args.n_images, args.seed)
    params = (args.sigma, args.n0, args.n, args.alpha, args.seed, args.batch_size)
    try:
        result = certify_dataset(model, samples, *params)
    except ValueError as e:  # bad sigma, n, n0, alpha or batch size
        print(f"birdshield certify: error: {e}", file=sys.stderr)
        return 2
    result = {"run": str(args.run_dir), "data": str(args.data), "split": args.split, **result}
    print(write_report(result, Path(args.out)), end="")
    print(f"-> {Path(args.out) / 'certify.json'}", file=sys.stderr)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job in one command: train briefly, evaluate robustness, print where the report is",
        formatter_class=_formatter,
        description="Train the default model briefly on DATA (linear probe on cached features, then a short "
        "fine-tune), evaluate it with `evaluate --quick` on the test split, and print where the report is. "
        "About 2 minutes on 2 CPU cores for birds-mini.",
    )
    p.add_argument(
        "--data", required=True, help="dataset root with train/valid/test (any layout `train` accepts)"
    )
    p.add_argument(
        "--out", default="runs/demo", help="folder for the run (OUT/run) and the report (OUT/report)"
    )
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after the linear probe")
    p.add_argument(
        "--n", type=int, default=None, help="evaluate a seeded, stratified subset of N test images"
    )
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    run, report = Path(args.out) / "run", Path(args.out) / "report"
    print(f"== 1/2 train -> {run}", flush=True)
    code = _run(["train", args.data, "--out", str(run), "--epochs", str(args.epochs)])
    if code == 0:
        print(f"== 2/2 evaluate --quick -> {report}", flush=True)
        subset = ["--n", str(args.n)] if args.n else []
        code = _run(["evaluate", str(run), args.data, "--out", str(report), "--quick", *subset])
    if code == 0:
        print(f"\nreport: {report / 'report.md'} (plots: accuracy_vs_eps.png, examples.png; model: {run})")
    return code


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_predict,
    _add_data,
    _add_evaluate,
    _add_attack,
    _add_demo,
    _add_certify,
    _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdshield",
        description="Train robust bird-species classifiers, "
        "attack them, defend them, and report honestly how robust they are.",
    )
    parser.add_argument("--version", action="version", version=f"birdshield {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for every command (0 = torch's default). On a CPU shared with other busy processes "
        "use fewer than the cores: each op waits for its slowest thread (1 thread measured 8x faster than 2 "
        "on a busy 2-core machine)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "preset", None):  # a preset changes the defaults; options given explicitly still win
        from .train import PRESETS

        parser._subparsers._group_actions[0].choices["train"].set_defaults(**PRESETS[args.preset][1])
        args = parser.parse_args(argv)
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
