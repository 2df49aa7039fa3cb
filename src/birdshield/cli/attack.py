"""`birdshield attack`: adversarial versions of image files, as lossless PNGs, and a CSV of what changed."""

from __future__ import annotations

import argparse
import sys

from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..attacks.registry import ATTACK_SPECS

    usable = {name: spec for name, spec in ATTACK_SPECS.items() if "surrogate" not in spec.options}
    p = options.command(
        sub,
        "attack",
        help="write adversarial versions of image files (PNG) and a CSV of what changed",
        description="Attack image files and folders (recursively) with one attack. Each adversarial image "
        "is written losslessly as PNG under OUT with the same path relative to the folder given (a file "
        "given alone: its name), suffix .png, at the model's input resolution (shorter side resized, centre "
        "crop: the exact pixels the model judged). OUT/attack.csv lists per image the label used, the clean "
        "and adversarial prediction and confidence (of the written 8-bit PNG) and the perturbation's "
        "Linf/L2 size in [0,1] pixel units. Untargeted label: the parent folder's name if it is one of the "
        "model's classes, else the model's own clean prediction. Input files are never overwritten, and "
        "files already in OUT only with --overwrite.",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs and attack.csv")
    p.add_argument(
        "--attack",
        default="pgd",
        choices=list(usable),
        help=options.literal("; ".join(f"{name}: {spec.summary}" for name, spec in usable.items())),
    )
    p.add_argument("--eps", default="4/255", help="radius, e.g. 4/255 (Linf) or 0.5 (L2)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model")
    p.add_argument("--steps", type=int, help="iterations (default: the attack's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts and random search")
    p.add_argument("--target", metavar="CLASS", help="targeted attack towards this class name")
    p.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_false",
        help="keep optimising after the first success (more confident adversarials; early stop gives the "
        "first, least-changed point that fools the model)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in OUT that this run would write (e.g. an earlier run's); input files "
        "are never overwritten",
    )
    options.add_batch_size(p, 16)
    options.add_device(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import birdshield

    from ..attack_io import attack_files, check_target
    from ..attacks.eps import parse_eps
    from ..runtime import tune_cpu_allocator

    with options.usage_errors():
        eps = parse_eps(args.eps)
    tune_cpu_allocator()
    model = birdshield.load(args.run_dir, device=args.device)
    with options.usage_errors():  # unknown target class, untargetable attack
        check_target(args.attack, args.target, model.class_names)
    rows = attack_files(
        model,
        args.paths,
        args.out,
        attack=args.attack,
        eps=eps,
        batch_size=args.batch_size,
        norm=args.norm,
        steps=args.steps,
        seed=args.seed,
        target=args.target,
        early_stop=args.early_stop,
        overwrite=args.overwrite,
    )
    bad = [r for r in rows if r["error"]]
    fooled = sum(1 for r in rows if r["success"] == 1)
    print(f"{len(rows) - len(bad)} images attacked, {fooled} fooled, {len(bad)} unreadable -> {args.out}")
    for r in bad:
        print(f"  unreadable: {r['image']}: {r['error']}", file=sys.stderr)
    return 0
