"""The `attack` command's file work: attack image files, write the adversarial images as 8-bit PNGs (same
relative paths, never over an input) and a CSV of what changed."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .. import data
from ..runtime import atomic_write_bytes, progress
from .base import inference_logits, model_device
from .registry import get_spec

CSV_COLUMNS = [
    "image", "output", "label", "label_source", "target", "clean_species", "clean_confidence",
    "adv_species", "adv_confidence", "success", "linf", "linf_255", "l2", "error",
]  # fmt: skip


def output_names(inputs: Sequence[str | Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: same path relative to the given folder (a file: its name), .png.

    Files found under ``out_dir`` while walking a folder are left out (a re-run must not attack its own
    outputs). Refuses (DataError) an input folder as ``out_dir`` and any output landing on an input file.
    """
    out_dir, pairs, used = Path(out_dir).absolute(), [], set()
    for given in map(Path, inputs):
        if given.is_dir() and given.resolve() == out_dir.resolve():
            raise data.DataError(f"--out {out_dir} is an input folder; choose another output folder")
        for f in data.list_images(given):
            if given.is_dir() and out_dir in f.absolute().parents:
                continue
            rel = f.relative_to(given) if given.is_dir() else Path(f.name)
            dst, k = out_dir / rel.with_suffix(".png"), 1
            while dst in used:  # a.jpg and a.png in one folder: keep both
                dst, k = out_dir / rel.with_name(f"{rel.stem}_{k}.png"), k + 1
            used.add(dst)
            pairs.append((f, dst))
    sources = {f.resolve() for f, _ in pairs}
    clash = [str(d) for _, d in pairs if d.resolve() in sources]
    if clash:
        raise data.DataError(f"output would overwrite input file(s) {clash[:3]}; choose another --out folder")
    return pairs


def quantise_8bit(x: Tensor, x_adv: Tensor, eps: float, norm: str) -> Tensor:
    """8-bit version of x_adv (values 0..255 as floats); for Linf the rounded change is kept inside the
    ball (x is on the grid). The `attack` command and the page write and judge these pixels."""
    q, q0 = (x_adv * 255).round(), (x * 255).round()
    if norm == "linf":
        k = math.floor(eps * 255 + 1e-6)
        q = q0 + (q - q0).clamp(-k, k)
    return q.clamp(0, 255)


def _png_bytes(q: Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(q.to(torch.uint8).permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _attack_batch(
    model: nn.Module, batch: list[tuple[Path, Path, Tensor]], attack: str, eps: float, options: dict[str, Any]
) -> list[dict[str, Any]]:
    names = model.class_names
    index = {name: i for i, name in enumerate(names)}
    x = torch.stack([t for _, _, t in batch]).to(model_device(model))
    p_clean = inference_logits(model, x).softmax(1)
    folder = [index.get(src.parent.name) for src, _, _ in batch]
    y = torch.tensor([f if f is not None else int(p) for f, p in zip(folder, p_clean.argmax(1), strict=True)])
    y = y.to(x.device)
    target = options.get("target")
    target_t = None if target is None else torch.full_like(y, index[target])
    spec = get_spec(attack)
    x_adv = spec.load()(model, x, y, **spec.kwargs(eps, **(options | {"target": target_t})))
    q = quantise_8bit(x, x_adv, eps, options.get("norm") or "linf")
    p_adv = inference_logits(model, q / 255).softmax(1)
    rows = []
    for i, (src, dst, _) in enumerate(batch):
        atomic_write_bytes(dst, _png_bytes(q[i]))
        row = _csv_row(names, int(y[i]), p_clean[i], p_adv[i], q[i] / 255 - x[i], target)
        src_label = "folder" if folder[i] is not None else "prediction"
        rows.append(row | {"image": str(src), "output": str(dst), "label_source": src_label})
    return rows


def _csv_row(
    names: Sequence[str], y: int, p_clean: Tensor, p_adv: Tensor, delta: Tensor, target: str | None
) -> dict[str, Any]:
    c, a = p_clean.max(0), p_adv.max(0)
    hit = names[int(a.indices)] == target if target else int(a.indices) != y
    linf = float(delta.abs().max())
    return {
        "label": names[y], "target": target or "", "success": int(hit), "error": "",
        "clean_species": names[int(c.indices)], "clean_confidence": f"{float(c.values):.4f}",
        "adv_species": names[int(a.indices)], "adv_confidence": f"{float(a.values):.4f}",
        "linf": f"{linf:.6f}", "linf_255": f"{linf * 255:.2f}", "l2": f"{float(delta.norm()):.4f}",
    }  # fmt: skip


def check_target(attack: str, target: str | None, class_names: Sequence[str]) -> None:
    """ValueError for an unknown target class or an attack that cannot be targeted."""
    if target is None:
        return
    if target not in class_names:
        raise ValueError(f"unknown target class {target!r}; the model's classes: {list(class_names)}")
    if not get_spec(attack).targeted:
        raise ValueError(f"attack {attack!r} cannot be targeted")


def attack_files(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    attack: str = "pgd",
    eps: float,
    batch_size: int = 16,
    **options: Any,
) -> list[dict[str, Any]]:
    """Attack image files and write the adversarial images as 8-bit PNGs plus ``out_dir/attack.csv``.

    Images are attacked at the model's input resolution (shorter side resized, centre crop, as in
    evaluation), so the PNGs have that size. Untargeted label: the parent folder's name if it is one of
    the model's classes, else the model's clean prediction. ``options``: norm, steps, seed, target (a
    class name), restarts, n_queries, early_stop (default True: the first point that fools). The CSV's
    adversarial prediction and perturbation size are those of the written 8-bit image. Unreadable files
    get a row with their error.
    """
    check_target(attack, options.get("target"), model.class_names)
    out_dir = Path(out_dir)
    pairs, rows, batch = output_names(inputs, out_dir), [], []
    for j, (src, dst) in enumerate(progress(pairs, desc=attack, unit="img")):
        try:
            batch.append((src, dst, data.to_tensor(data.read_rgb(src), model.image_size)))
        except data.BadImageError as e:
            rows.append(dict.fromkeys(CSV_COLUMNS, "") | {"image": str(src), "error": e.reason})
        if batch and (len(batch) == batch_size or j == len(pairs) - 1):
            rows += _attack_batch(model, batch, attack, eps, options)
            batch = []
    order = {str(src): i for i, (src, _) in enumerate(pairs)}
    rows.sort(key=lambda r: order[r["image"]])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "attack.csv", buf.getvalue().encode())
    return rows
