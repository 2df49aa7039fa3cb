"""A standard and a robust model mixed in probability space, attacked as one model.

    python experiments/probability_mix.py STANDARD_RUN ROBUST_RUN DATA OUT [--weights 0,0.3,0.5]
        [--split valid] [--eps 2/255,4/255] [--n-images N] [--threads T]

One of the levers for the clean accuracy that adversarial training costs: let a standard model speak where
the robust one is unsure. For each weight w the mix predicts

    log((1 - w) * softmax(robust(x)) + w * softmax(standard(x)))

so the standard model can move at most w of the probability mass, however large its logits under attack
(mixing logits instead lets an attacker drive the standard model's logits past the robust ones). Each model
sees the image at its own input size (the mix reads the larger one and resizes down, differentiably). The
attacks see the whole mix, gradients through both models, so the robust accuracy is the mix's own, not
its parts'. w = 0 is the robust model alone through the same path.

Each weight is measured with `birdshield evaluate --quick`'s ensemble (FGSM, PGD-10, APGD-CE-20,
Square-200) at --eps, no corruptions, into OUT/w<weight>/ (resumable: run again to go on), then
compared side by side in OUT/compare.md. The default split is valid: these are selection numbers; measure
the test split once, for the weight chosen here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch.nn.functional as F
from torch import Tensor, nn

import birdshield
from birdshield.attacks.eps import parse_eps
from birdshield.cli.evaluate import evaluate_and_print
from birdshield.cli.options import split_list
from birdshield.evaluation.config import PRESETS
from birdshield.reporting.compare import load_reports, write_comparison
from birdshield.runtime import set_threads, tune_cpu_allocator
from birdshield.training.robust import resized


class ProbabilityMix(nn.Module):
    """log((1 - w) p_robust + w p_standard) for [0,1] images at the larger of the two input sizes."""

    def __init__(self, standard: nn.Module, robust: nn.Module, weight: float) -> None:
        super().__init__()
        if list(standard.class_names) != list(robust.class_names):
            sys.exit("the two runs were trained on different class lists; mix runs of the same data")
        self.standard, self.robust, self.weight = standard, robust, weight
        self.class_names = robust.class_names
        self.image_size = max(standard.image_size, robust.image_size)
        arch = f"mix({standard.meta['arch']}, {robust.meta['arch']}, w={weight})"
        self.meta = {"arch": arch, "image_size": self.image_size}

    def forward(self, x: Tensor) -> Tensor:
        p = (1 - self.weight) * F.softmax(self.robust(resized(x, self.robust.image_size)), dim=1)
        if self.weight > 0:
            p = p + self.weight * F.softmax(self.standard(resized(x, self.standard.image_size)), dim=1)
        return p.clamp_min(1e-12).log()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("standard_run")
    p.add_argument("robust_run")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--weights", default="0,0.3,0.5", help="weights w of the standard model to measure")
    p.add_argument("--split", default="valid", help="valid (default: selection) or test (once, at the end)")
    p.add_argument("--eps", default="2/255,4/255", help="Linf radii of the quick ensemble")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--n-images", type=int, help="a seeded, stratified subset (default: the whole split)")
    args = p.parse_args()

    if args.threads:
        set_threads(args.threads)
    tune_cpu_allocator()
    torch_models = [birdshield.load(r, runtime="torch") for r in (args.standard_run, args.robust_run)]
    twins = [birdshield.load(r, runtime="onnx") for r in (args.standard_run, args.robust_run)]
    cfg = dataclasses.replace(
        PRESETS["quick"],
        eps=tuple(parse_eps(e) for e in split_list(args.eps)),
        corruptions=(),
        noise_std=(),
        n=args.n_images,
    )
    reports = []
    for w in map(float, split_list(args.weights)):
        print(f"\n== weight {w} of the standard model ==", flush=True)
        folder = f"{args.out}/w{w:g}"
        mix, twin = ProbabilityMix(*torch_models, w), ProbabilityMix(*twins, w)
        evaluate_and_print(mix, args.data, args.split, cfg, folder, resume=True, forward_model=twin)
        reports.append(load_reports(folder, f"w={w:g}"))
    print(f"-> {write_comparison(reports, args.out)}")


if __name__ == "__main__":
    main()
