"""Prediction, the one place that predicts: tensors (or image files) in, top-k species out, with an
optional defence. `predict`, the page and export all call these functions.

A defence is what `defenses.make_defense` returns: None, an input transform (applied before the model, as
`Defended` does) or a `SmoothingDefense` (a vote over noisy copies that may abstain; its confidences are
vote shares).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from . import data
from .defenses.smoothing import ABSTAIN, Smoothed
from .defenses.specs import SmoothingDefense
from .prediction_csv import to_csv, write_csv
from .runtime import model_device, progress

__all__ = [
    "ABSTAIN_NAME",
    "Top",
    "inference_logits",
    "iter_predictions",
    "predict_files",
    "predict_tensor",
    "to_csv",
    "write_csv",
]

ABSTAIN_NAME = "ABSTAIN"
Top = list[tuple[str, float | None]]  # (species, confidence) best first; confidence None for ABSTAIN


def _top(class_names: Sequence[str], scores: Tensor, k: int) -> Top:
    values, idx = scores.topk(min(k, scores.shape[0]))
    return [(class_names[j], p) for j, p in zip(idx.tolist(), values.tolist(), strict=True)]


def inference_logits(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The model's logits without autograd, as a normal tensor (inference tensors refuse later in-place
    writes)."""
    with torch.inference_mode():
        out = model(x)
    return out.clone()


@torch.inference_mode()
def predict_tensor(model: nn.Module, x: Tensor, *, top_k: int = 1, defense: object = None) -> list[Top]:
    """Top-k (species, confidence) per image of a batch x (N, 3, H, W) in [0, 1] at the model's size."""
    x = x.to(model_device(model))
    if isinstance(defense, SmoothingDefense):
        return [_smoothed_top(model, img[None], top_k, defense, defense.seed) for img in x]
    if defense is not None:
        x = defense(x)
    probs = model(x).float().softmax(1)
    return [_top(model.class_names, p, top_k) for p in probs]


def _smoothed_top(model: nn.Module, x: Tensor, top_k: int, defense: SmoothingDefense, seed: int) -> Top:
    """Confidences are shares of the n noisy votes. An abstention is the species "ABSTAIN" with no
    confidence, followed by the classes ranked by votes (the leading class stays visible with top_k >= 2)."""
    smoothed = Smoothed(model, defense.sigma, batch_size=defense.batch_size)
    classes, counts = smoothed.predict(x, defense.n, defense.alpha, seed=seed)
    top = _top(model.class_names, counts[0].double() / defense.n, top_k)
    return [(ABSTAIN_NAME, None), *top][:top_k] if int(classes[0]) == ABSTAIN else top


def predict_files(
    model: nn.Module,
    paths: Sequence[Path],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    defense: object = None,
    workers: int = 1,
) -> list[dict]:
    """One dict per path, in order: image, top (list of (species, confidence)), error ('' when fine).

    Files are read a batch at a time, `workers` threads decoding ahead of the model (data.read_batches);
    an unreadable one gets its error instead of stopping the run.
    """
    batches = iter_predictions(
        model, paths, top_k=top_k, batch_size=batch_size, defense=defense, workers=workers
    )
    return [row for rows in batches for row in rows]


def iter_predictions(
    model: nn.Module,
    paths: Sequence[Path],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    defense: object = None,
    workers: int = 1,
    start: int = 0,
) -> Iterator[list[dict]]:
    """The rows of ``predict_files`` for ``paths[start:]``, a batch at a time as they are made (so a caller
    can save each batch at once). The rows are the same whatever ``start``: smoothing seeds image i with
    seed + i, i its index in ``paths``."""
    if isinstance(defense, SmoothingDefense):
        yield from _smoothed_rows(model, paths, top_k, defense, start)
        return
    batches = data.read_batches(paths[start:], model.image_size, batch_size, workers)
    done = start
    for good, x, bad in progress(batches, desc="predict", total=-(-(len(paths) - start) // batch_size)):
        tops = [] if x is None else predict_tensor(model, x, top_k=top_k, defense=defense)
        by_index = {start + n: top for n, top in zip(good, tops, strict=True)}
        errors = iter(bad)  # the chunk's other images, in order
        rows = []
        for i in range(done, done + len(good) + len(bad)):
            if i in by_index:
                rows.append({"image": str(paths[i]), "top": by_index[i], "error": ""})
            else:
                path, reason = next(errors)
                rows.append({"image": str(path), "top": [], "error": reason})
        done += len(rows)
        yield rows


def _smoothed_rows(
    model: nn.Module, paths: Sequence[Path], top_k: int, defense: SmoothingDefense, start: int
) -> Iterator[list[dict]]:
    """Smoothing votes image by image (n noisy copies each), one row at a time; image i is seeded with
    seed + i."""
    for i in progress(range(start, len(paths)), desc="predict", unit="img"):
        path = paths[i]
        try:
            x = data.load_tensor(path, model.image_size)[None].to(model_device(model))
        except data.BadImageError as e:
            yield [{"image": str(path), "top": [], "error": e.reason}]
            continue
        with torch.inference_mode():
            top = _smoothed_top(model, x, top_k, defense, defense.seed + i)
        yield [{"image": str(path), "top": top, "error": ""}]
