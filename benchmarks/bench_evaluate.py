"""`birdshield evaluate` with its passes without gradients on torch vs onnxruntime: same run, same images.

    python benchmarks/bench_evaluate.py RUN_DIR [--data DIR] [--n-images 150] [--repeats 2] [-- EVAL_ARGS]

Each side is a whole `evaluate` process (imports, model load, ONNX export on first use, decoding, report)
with ``--runtime torch`` or ``--runtime onnx``, run alternately ``--repeats`` times (the best of each is
kept, so a busy moment on a shared machine counts against neither). Printed: wall seconds, the
evaluation's own seconds, where the forward-only work goes (the Square rows' seconds; clean pass and
corruptions are the evaluation's seconds less all attacks'), and whether the two reports give the same
numbers (they should: onnxruntime's logits agree with torch's to about 1e-6).
Arguments after ``--`` go to evaluate (default: the quick preset, every corruption, Square included).
``--data`` defaults to ``$BIRDSHIELD_SHARED/data/birds-mini``, else ``<repo>/../shared/data/birds-mini``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _plain import timed

SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _numbers(report: dict) -> dict:
    """The report's measurements: everything but timings and the runtime's own name."""
    report = json.loads(json.dumps(report))
    report.pop("seconds")
    report["config"].pop("forward_model")
    for row in report["results"]:
        row.pop("seconds")
    return report


def _run(args: argparse.Namespace, runtime: str, out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "birdshield.cli", "evaluate", str(args.run_dir), str(args.data)]
    cmd += ["--out", str(out), "--n-images", str(args.n_images), "--runtime", runtime, *args.eval_args]
    wall, _ = timed(cmd, dict(os.environ))
    return wall, json.loads((out / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run directory written by `birdshield train`")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "birds-mini", help="dataset root")
    p.add_argument("--n-images", type=int, default=150, help="images evaluated (stratified subset)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; the best counts")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.eval_args = argv[cut + 1 :]  # after --: evaluate's own options

    best: dict[str, tuple[float, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for runtime in ("torch", "onnx"):
                wall, report = _run(args, runtime, Path(tmp) / f"{runtime}{i}")
                print(f"{runtime:5s} run {i + 1}: {wall:6.1f} s whole process", flush=True)
                if runtime not in best or wall < best[runtime][0]:
                    best[runtime] = (wall, report)
    print(f"\n{best['torch'][1]['n']} images; best of {args.repeats}:")
    for runtime, (wall, report) in best.items():
        attacks = sum(r["seconds"] for r in report["results"])
        square = sum(r["seconds"] for r in report["results"] if r["attack"] == "square")
        print(
            f"{runtime:5s} {wall:6.1f} s whole process, {report['seconds']:6.1f} s evaluating: "
            f"clean + corruptions {report['seconds'] - attacks:6.1f} s, square {square:6.1f} s, "
            f"gradient attacks {attacks - square:6.1f} s"
        )
    (torch_wall, torch_report), (onnx_wall, onnx_report) = best["torch"], best["onnx"]
    print(f"time ratio torch/onnx: {torch_wall / onnx_wall:.2f}x whole process, "
          f"{torch_report['seconds'] / onnx_report['seconds']:.2f}x evaluating")  # fmt: skip
    same = _numbers(torch_report) == _numbers(onnx_report)
    print("same report numbers: " + ("yes" if same else "NO (compare the two report.json)"))


if __name__ == "__main__":
    main()
