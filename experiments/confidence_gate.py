"""How much clean accuracy a confidence gate between a robust model and its standard teacher could buy, and
what it would cost under attack: one fold of a `train --teacher standard --cv K` run.

    python experiments/confidence_gate.py CV_RUN DATA --fold F [--k 5] [--seed 0] [--eps 2/255,4/255]
        [--gates 0,0.2,0.3,0.4,0.5,0.6,0.7] [--threads T]

The gate answers with the robust model where its top softmax probability reaches a threshold t, and with
the standard teacher elsewhere (the idea behind confidence-reshaped mixes such as MixedNUTS, Bai et al.
2024). On the fold's held-out photos (the ones CV_RUN/fold-F never trained on; DATA, k and seed must be
those of the cross-validation) it prints, for each t:

- clean: exact for the gate;
- under attack: photos the robust model still names right *and* with probability >= t after PGD-20 (CE, no
  early stop) on the robust model alone. The standard teacher falls to any white-box attack, so a gated
  model keeps at most these; the count is an optimistic bound, as PGD-20 is weaker than the quick ensemble
  (`t = 0` is the robust model alone under PGD-20).

The teacher reads the photos at its own size; the robust model reads them resized (antialiased bilinear)
to its own.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

import birdshield
from birdshield import data
from birdshield.attacks.eps import format_eps, parse_eps
from birdshield.attacks.pgd import pgd
from birdshield.cli.options import split_list
from birdshield.data.images import load_tensor
from birdshield.stats import format_count
from birdshield.training.cv import fold_dataset
from birdshield.training.robust import resized


class Resized(nn.Module):
    """`model` fed images resized to its input size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.size = model, model.image_size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(resized(x, self.size))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cv_run", help="a `train --teacher standard --cv K` output folder")
    p.add_argument("data", help="the data set it cross-validated")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--k", type=int, default=5, help="its number of folds")
    p.add_argument("--seed", type=int, default=0, help="its seed")
    p.add_argument("--eps", default="2/255,4/255", help="Linf radii of the PGD-20 attack")
    p.add_argument("--gates", default="0,0.2,0.3,0.4,0.5,0.6,0.7", help="thresholds t to tabulate")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = f"{args.cv_run}/fold-{args.fold}"
    robust = Resized(birdshield.load(run, runtime="torch")).eval()
    teacher = birdshield.load(f"{run}/teacher", runtime="torch").eval()
    held_out = fold_dataset(data.discover(args.data), args.k, args.fold, args.seed).splits["test"]
    x = torch.stack([load_tensor(s.path, teacher.image_size) for s in held_out])
    y = torch.tensor([s.label for s in held_out])
    with torch.no_grad():
        robust_p, teacher_pred = robust(x).softmax(1), teacher(x).argmax(1)
    attacked = {}
    for eps in map(parse_eps, split_list(args.eps)):
        chunks = zip(x.split(30), y.split(30), strict=True)
        x_adv = torch.cat([pgd(robust, xb, yb, eps=eps, steps=20, early_stop=False) for xb, yb in chunks])
        with torch.no_grad():
            attacked[format_eps(eps)] = robust(x_adv).softmax(1)

    n = len(y)
    teacher_right = int((teacher_pred == y).sum())
    print(f"fold {args.fold}: {n} held-out photos; the teacher alone {format_count(teacher_right, n)}")
    print("| t | clean | " + " | ".join(f"PGD-20 {e} (bound)" for e in attacked) + " |")
    print("|---" * (2 + len(attacked)) + "|")
    for t in map(float, split_list(args.gates)):
        confident = robust_p.max(1).values >= t
        clean = torch.where(confident, robust_p.argmax(1), teacher_pred) == y
        kept = [(q.argmax(1) == y) & (q.max(1).values >= t) for q in attacked.values()]
        cells = [format_count(int(c.sum()), n) for c in (clean, *kept)]
        print(f"| {t:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
