"""Prediction, the one place that predicts: tensors (or image files) in, top-k species out, with an
optional defence. `predict`, the page and export all call these functions.

A defence is what `defenses.make_defense` returns: None, an input transform (applied before the model, as
`Defended` does) or a `SmoothingDefense` (a vote over noisy copies that may abstain; its confidences are
vote shares).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from . import data
from .defenses.smoothing import ABSTAIN, Smoothed
from .defenses.specs import SmoothingDefense
from .reporting.tables import csv_text
from .runtime import atomic_write_bytes, model_device, progress

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
    if isinstance(defense, SmoothingDefense):
        return _smoothed_rows(model, paths, top_k, defense)
    rows: dict[Path, dict] = {}
    batches = data.read_batches(paths, model.image_size, batch_size, workers)
    for good, x, bad in progress(batches, desc="predict", total=-(-len(paths) // batch_size)):
        for path, reason in bad:
            rows[path] = {"image": str(path), "top": [], "error": reason}
        if x is not None:
            for n, top in zip(good, predict_tensor(model, x, top_k=top_k, defense=defense), strict=True):
                rows[paths[n]] = {"image": str(paths[n]), "top": top, "error": ""}
    return [rows[p] for p in paths]


def _smoothed_rows(
    model: nn.Module, paths: Sequence[Path], top_k: int, defense: SmoothingDefense
) -> list[dict]:
    """Smoothing votes image by image (n noisy copies each); image i is seeded with seed + i."""
    rows = []
    for i, path in enumerate(progress(paths, desc="predict", unit="img")):
        try:
            x = data.load_tensor(path, model.image_size)[None].to(model_device(model))
        except data.BadImageError as e:
            rows.append({"image": str(path), "top": [], "error": e.reason})
            continue
        with torch.inference_mode():
            rows.append(
                {
                    "image": str(path),
                    "top": _smoothed_top(model, x, top_k, defense, defense.seed + i),
                    "error": "",
                }
            )
    return rows


def _numeric_key(path: str) -> tuple:
    """Sort 2.jpg before 10.jpg, as the original grading file did; non-numeric names after, by name."""
    stem = Path(path).stem
    return (0, int(stem), path) if re.fullmatch(r"\d+", stem) else (1, 0, path)


def to_csv(rows: list[dict], *, top_k: int = 1, grading: bool = False) -> str:
    """'csv': image,species,confidence[,species_k,confidence_k],error; 'grading': the original project's
    image,specie file sorted by numeric file name. Cells a spreadsheet would run are escaped (csv_text)."""
    if grading:
        ordered = sorted(rows, key=lambda r: _numeric_key(r["image"]))
        table = [[Path(r["image"]).name, r["top"][0][0] if r["top"] else ""] for r in ordered]
        return csv_text([["image", "specie"], *table])
    header = ["image", "species", "confidence"]
    for i in range(2, top_k + 1):
        header += [f"species_{i}", f"confidence_{i}"]
    table = []
    for row in rows:
        cells = [row["image"]]
        for i in range(top_k):
            name, p = row["top"][i] if i < len(row["top"]) else ("", None)
            cells += [name, "" if p is None else f"{p:.4f}"]
        table.append([*cells, row["error"]])
    return csv_text([[*header, "error"], *table])


def write_csv(rows: list[dict], out: Path, **kwargs) -> None:
    atomic_write_bytes(Path(out), to_csv(rows, **kwargs).encode())
