"""`birdshield evaluate`: clean, corruption and worst-case adversarial accuracy of a run; a report folder."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defenses.specs import TRANSFORM_NAMES
from . import options

if TYPE_CHECKING:  # types only; `device` stays Any: no torch import in cli, even for types
    from ..distributed import Dist


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "evaluate",
        help="clean, corruption and worst-case adversarial accuracy; write a report folder",
        description="Measure a trained run on a dataset split: clean accuracy, accuracy under common "
        "corruptions, and robust accuracy per eps under an attack ensemble (an image is robust only if it "
        "survives every attack; only images still correct go on to the next attack). Sanity checks for "
        "gradient masking and broken evaluations are printed and stored. Writes OUT/report.json, "
        "report.md, accuracy_vs_eps.png and examples.png; progress is saved per chunk, so an interrupted "
        "run continues with --resume. Options left out take the preset's value (--quick: fgsm, pgd-10, "
        "apgd-ce-20, square-200 at 1,2,4/255 Linf, for a CPU; --full: fgsm, pgd-50 x5 restarts, "
        "apgd-ce-100, apgd-t-100, square-5000 at 1,2,4,8/255, for a GPU).",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("data", help="dataset root (any layout `train` accepts)")
    p.add_argument("--split", default="test", help="which split to evaluate")
    p.add_argument("--out", required=True, help="report folder to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick", dest="eval_preset", action="store_const", const="quick", help="CPU-sized (default)"
    )
    g.add_argument(
        "--full",
        dest="eval_preset",
        action="store_const",
        const="full",
        help="AutoAttack strength, for a GPU",
    )
    p.set_defaults(eval_preset="quick")
    g = p.add_argument_group("attacks (default: the preset's)")
    g.add_argument("--attacks", help=f"comma list in cascade order, cheapest first; from: {_attack_names()}")
    g.add_argument("--eps", help="comma list, e.g. 1/255,2/255 (L2 default 0.25,0.5,1)")
    g.add_argument("--norm", choices=["linf", "l2"], help="threat model (square is Linf-only, cw L2-only)")
    g.add_argument("--steps", type=int, help="iterations of every iterative attack")
    g.add_argument("--restarts", type=int, help="PGD random restarts")
    g.add_argument("--square-queries", type=int, help="Square attack queries per image")
    g.add_argument(
        "--targets", type=int, help="APGD-T: the top wrong classes tried as targets (AutoAttack's: 9)"
    )
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
    options.add_n_images(g, "evaluate")
    g.add_argument("--seed", type=int, help="seed of the subset, attacks and noise (default 0)")
    g.add_argument("--batch-size", type=int, help="images per chunk (default 32)")
    options.add_device(g)
    options.add_runtime(g, "the passes without gradients (clean, corruptions, Square's queries)")
    options.add_resume(g, "evaluation")
    g = p.add_argument_group("defence (an input transform before the model, attacked through it)")
    options.add_defense(
        g,
        list(TRANSFORM_NAMES),
        "Every attack sees the transformed model, with the transform's gradient replaced by the identity "
        "(BPDA), so the numbers show what the transform really buys. Randomized smoothing is measured by "
        "`certify` instead",
    )
    p.set_defaults(handler=run)
    return p


def _attack_names() -> str:
    from ..attacks.registry import ATTACK_SPECS

    return ", ".join(ATTACK_SPECS)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """EvalConfig fields the user set; UsageError for bad names or numbers."""
    from ..attacks.eps import parse_eps
    from ..attacks.registry import CORRUPTIONS, get_spec
    from ..evaluation.config import DEFAULT_L2_EPS

    o: dict[str, Any] = {"independent": args.independent}
    with options.usage_errors():
        if args.attacks:
            o["attacks"] = tuple(options.split_list(args.attacks))
            for name in o["attacks"]:
                get_spec(name)
        if args.norm:
            o["norm"] = args.norm
        if args.eps:
            o["eps"] = tuple(parse_eps(e) for e in options.split_list(args.eps))
        elif args.norm == "l2":
            o["eps"] = DEFAULT_L2_EPS
        if args.steps is not None:
            o["steps"], o["default_steps"] = {}, args.steps
        for key, field in (
            ("restarts", "restarts"),
            ("square_queries", "square_queries"),
            ("targets", "n_target_classes"),
            ("n_images", "n"),
            ("seed", "seed"),
            ("batch_size", "batch_size"),
        ):
            if getattr(args, key) is not None:
                o[field] = getattr(args, key)
        if args.corruptions == "none":
            o["corruptions"], o["noise_std"] = (), ()
        elif args.corruptions:
            o["corruptions"] = tuple(options.split_list(args.corruptions))
            unknown = set(o["corruptions"]) - set(CORRUPTIONS)
            if unknown:
                raise ValueError(f"unknown corruption(s) {sorted(unknown)}; valid: {', '.join(CORRUPTIONS)}")
        if args.severities:
            o["severities"] = tuple(int(s) for s in options.split_list(args.severities))
        if args.noise_std:
            o["noise_std"] = (
                () if args.noise_std == "none" else tuple(map(float, options.split_list(args.noise_std)))
            )
    return o


def run(args: argparse.Namespace) -> int:
    from ..distributed import MEASURING_TIMEOUT, process_group

    overrides = config_overrides(args)  # every option is checked before the model is loaded
    # one process unless under torchrun
    with process_group(args.device, MEASURING_TIMEOUT) as (shard, device):
        _run(args, overrides, shard, device)
    return 0


def _run(args: argparse.Namespace, overrides: dict[str, Any], shard: Dist, device: Any) -> None:
    import birdshield

    from .. import models
    from ..defenses import Defended, make_defense
    from ..distributed import main_first
    from ..evaluation import prepare_out_dir
    from ..evaluation.config import PRESETS
    from ..runtime import tune_cpu_allocator

    with options.usage_errors():
        transform = make_defense(args.defense, args.defense_param)
    prepare_out_dir(args.out)  # an unwritable --out fails now, not after the evaluation
    tune_cpu_allocator()  # 2-3x faster CPU forward/backward; must come before the big allocations
    model = birdshield.load(args.run_dir, device=device)
    # The passes without gradients run on onnxruntime where that is faster (--runtime auto: on a CPU).
    # Rank 0 first: it writes the run's ONNX export once, the others then read it.
    twin = None
    if models.resolve_runtime(args.runtime, device, args.run_dir) == "onnx":
        twin = main_first(shard, lambda: birdshield.load(args.run_dir, runtime="onnx", device=device))
    if transform is not None:
        model = Defended(model, transform)
        twin = None if twin is None else Defended(twin, transform)
    surrogate = birdshield.load(args.surrogate, device=device) if args.surrogate else None
    cfg = dataclasses.replace(PRESETS[args.eval_preset], **overrides)
    evaluate_and_print(
        model,
        args.data,
        args.split,
        cfg,
        args.out,
        resume=args.resume,
        run_dir=args.run_dir,
        forward_model=twin,
        surrogate=surrogate,
        surrogate_dir=args.surrogate,
        shard=shard,
    )


def evaluate_and_print(model: Any, data_root: str, split: str, cfg: Any, out: str, **kwargs: Any) -> dict:
    """Evaluate `model` on a split of `data_root` into the report folder `out`, with a progress bar; print
    the summary and where the report is (`evaluate` and `demo`). Under torchrun (``shard`` in kwargs) only
    rank 0 shows the bar and prints."""
    from .. import data
    from ..evaluation import evaluate_to_dir
    from ..reporting.markdown import format_summary
    from ..runtime import preload, stage_progress

    main = getattr(kwargs.get("shard"), "main", True)
    preload("matplotlib.figure", "scipy.stats")  # for the report, while the evaluation runs
    samples = data.samples_for_model(data.discover(data_root), split, model.class_names)
    with stage_progress("evaluate") if main else contextlib.nullcontext() as on_progress:
        report = evaluate_to_dir(model, samples, cfg, out, split=split, on_progress=on_progress, **kwargs)
    if not main:
        return report
    print(format_summary(report))
    for bad in report["bad_images"]:
        print(f"  unreadable, left out: {bad['path']}: {bad['error']}", file=sys.stderr)
    print(f"\n{report['n']} images in {report['seconds']:.0f} s; report: {Path(out) / 'report.md'}")
    return report
