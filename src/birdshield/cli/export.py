"""`birdshield export`: a run as an ONNX file for onnxruntime."""

from __future__ import annotations

import argparse

from ..defenses.specs import DEFENSES
from . import options


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "export",
        help="export a run to ONNX for onnxruntime",
        description="Write RUN_DIR's model as ONNX: [0,1] RGB NCHW images at the model's size in, logits "
        "out, normalisation inside. Class names, image size and preprocessing are in the file's metadata. "
        "JPEG and randomized smoothing cannot be one graph: apply them around the exported model (predict "
        "--runtime onnx --defense jpeg|smoothing does).",
    )
    p.add_argument("run_dir", help="run directory written by `birdshield train`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--static-batch", type=int, default=None, metavar="N", help="fix the batch size at N (default: any)"
    )
    g = p.add_argument_group("defence inside the graph")
    options.add_defense(
        g,
        list(DEFENSES),
        "bits and median run inside the exported graph; jpeg and smoothing are refused, with why",
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx, graph_transform, weights_digest
    from ..models import load_checkpoint

    with options.usage_errors():
        if args.static_batch is not None and args.static_batch < 1:
            raise ValueError(f"--static-batch must be >= 1, got {args.static_batch}")
        graph_transform(args.defense, args.defense_param)  # a bad parameter fails before the model loads
    model = load_checkpoint(args.run_dir)
    path = export_onnx(
        model,
        args.out,
        dynamic_batch=args.static_batch is None,
        batch_size=args.static_batch or 1,
        defense=args.defense,
        defense_param=args.defense_param,
        source_digest=weights_digest(args.run_dir),
    )
    shape = f"batch {args.static_batch or 'any'}, {model.image_size}px"
    print(f"{path}: {len(model.class_names)} classes, {shape}, defence {args.defense}")
    return 0
