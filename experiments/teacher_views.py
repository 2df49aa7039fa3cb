"""What a distillation teacher loses by reading its student's smaller images: every fold of a
`train --teacher standard --cv K` run.

    python experiments/teacher_views.py CV_RUN DATA [--k 5] [--seed 0] [--threads T]

During robust training the teacher sees the student's batch (160 px for robust-cpu) resized up to its own
size (224 px for the default recipe), not the photo decoded at 224. On each fold's held-out photos (DATA, k
and seed must be those of the cross-validation) it counts the photos named right by the teacher decoded at
its own size, by the teacher fed the student's size resized up (what distillation shows the student), and by
the robust student itself. If the second column sits close to the first, decoding the teacher's input at its
own size cannot buy the student much.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

import birdshield
from birdshield import data
from birdshield.data.images import load_tensor
from birdshield.stats import format_count
from birdshield.training.cv import fold_dataset
from birdshield.training.robust import resized


def _right(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Photos `model` names right, `x` resized to its input size (in batches of 30, for memory)."""
    with torch.no_grad():
        return sum(
            int((model(resized(xb, model.image_size)).argmax(1) == yb).sum())
            for xb, yb in zip(x.split(30), y.split(30), strict=True)
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cv_run", help="a `train --teacher standard --cv K` output folder")
    p.add_argument("data", help="the data set it cross-validated")
    p.add_argument("--k", type=int, default=5, help="its number of folds")
    p.add_argument("--seed", type=int, default=0, help="its seed")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print("| fold | teacher, own size | teacher, student's size resized up | student |")
    print("|---|---|---|---|")
    totals = [0, 0, 0, 0]
    for fold in range(args.k):
        run = f"{args.cv_run}/fold-{fold}"
        student = birdshield.load(run, runtime="torch").eval()
        teacher = birdshield.load(f"{run}/teacher", runtime="torch").eval()
        held_out = fold_dataset(data.discover(args.data), args.k, fold, args.seed).splits["test"]
        y = torch.tensor([s.label for s in held_out])
        at_teacher, at_student = (
            torch.stack([load_tensor(s.path, size) for s in held_out])
            for size in (teacher.image_size, student.image_size)
        )
        views = ((teacher, at_teacher), (teacher, at_student), (student, at_student))
        counts = [_right(model, x, y) for model, x in views]
        totals = [t + c for t, c in zip(totals, [*counts, len(y)], strict=True)]
        print(f"| {fold} | " + " | ".join(format_count(c, len(y)) for c in counts) + " |", flush=True)
    print("| all | " + " | ".join(format_count(c, totals[-1]) for c in totals[:-1]) + " |")


if __name__ == "__main__":
    main()
