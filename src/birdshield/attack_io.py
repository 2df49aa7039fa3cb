"""The `attack` command's file work: attack image files, write the adversarial images as 8-bit PNGs (same
relative paths, never over an input) and a CSV of what changed."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from . import data
from .attacks.base import quantise_in_ball
from .attacks.registry import get_spec
from .inference import inference_logits
from .reporting.tables import csv_text
from .runtime import atomic_write_bytes, model_device, progress

CSV_COLUMNS = [
    "image", "output", "label", "label_source", "target", "clean_species", "clean_confidence",
    "adv_species", "adv_confidence", "success", "linf", "linf_255", "l2", "error",
]  # fmt: skip
CSV_NAME = "attack.csv"


def output_names(
    inputs: Sequence[str | Path], out_dir: Path, *, overwrite: bool = False
) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: same path relative to the given folder (a file: its name), .png.

    Files found under ``out_dir`` while walking a folder are left out (a re-run must not attack its own
    outputs). Refuses (DataError), before anything is written: an input folder as ``out_dir``; any output
    or ``attack.csv`` that already exists, unless ``overwrite``; and, even with ``overwrite``, any output
    that is an input file. Paths are compared as the file system sees them: resolved, by identity
    (device and inode) where they exist, and case-insensitively where ``out_dir``'s file system is.
    """
    out_dir = Path(out_dir).absolute()
    key = _path_key(out_dir)
    pairs, used = [], set()
    for given in map(Path, inputs):
        if given.is_dir() and _same_file(given, out_dir):
            raise data.DataError(f"--out {out_dir} is an input folder; choose another output folder")
        for f in data.list_images(given):
            if given.is_dir() and _is_within(f, out_dir, key):
                continue
            rel = f.relative_to(given) if given.is_dir() else Path(f.name)
            dst, k = out_dir / rel.with_suffix(".png"), 1
            while key(dst) in used:  # a.jpg and a.png in one folder (A.png and a.png on such disks): keep all
                dst, k = out_dir / rel.with_name(f"{rel.stem}_{k}.png"), k + 1
            used.add(key(dst))
            pairs.append((f, dst))
    _refuse_overwrites(pairs, out_dir / CSV_NAME, overwrite)
    return pairs


def _path_key(folder: Path) -> Callable[[Path], str]:
    """How paths under `folder` compare: case-folded where its file system ignores case."""
    return (lambda p: str(p).casefold()) if _ignores_case(folder) else str


def _ignores_case(folder: Path) -> bool:
    """Probe the file system that holds `folder` (or would: its nearest existing parent) with a temporary
    file; where it cannot be probed, assume it ignores case (the careful answer)."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), None)
    if existing is None:
        return True
    try:
        with tempfile.NamedTemporaryFile(prefix=".birdshield-Case-Probe-", dir=existing) as probe:
            name = Path(probe.name)
            return (name.parent / name.name.swapcase()).exists()
    except OSError:
        return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _is_within(path: Path, folder: Path, key: Callable[[Path], str]) -> bool:
    folder_key = key(folder.resolve())
    return any(key(parent) == folder_key for parent in path.resolve().parents)


def _refuse_overwrites(pairs: list[tuple[Path, Path]], csv_path: Path, overwrite: bool) -> None:
    inputs = {_identity(f) for f, _ in pairs} - {None}
    existing = [dst for dst in [*(dst for _, dst in pairs), csv_path] if os.path.lexists(dst)]
    for clash, what in (
        ([d for d in existing if _identity(d) in inputs], "input file(s)"),
        ([d for d in existing if d.is_dir()], "folder(s)"),
    ):
        if clash:
            names = [str(d) for d in clash[:3]]
            raise data.DataError(f"output would overwrite {what} {names}; choose another --out folder")
    if existing and not overwrite:
        names = ", ".join(str(d) for d in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise data.DataError(
            f"--out already holds {len(existing)} file(s) this run would overwrite ({names}); "
            "pass --overwrite to replace them, or choose another folder"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` points to; None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _png_bytes(x: Tensor) -> bytes:
    """A (3, H, W) image on the 8-bit grid as lossless PNG."""
    buf = io.BytesIO()
    pixels = (x * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(pixels).save(buf, format="PNG")
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
    x_adv = quantise_in_ball(x, x_adv, eps, options.get("norm") or "linf")
    p_adv = inference_logits(model, x_adv).softmax(1)
    rows = []
    for i, (src, dst, _) in enumerate(batch):
        atomic_write_bytes(dst, _png_bytes(x_adv[i]))
        row = _csv_row(names, int(y[i]), p_clean[i], p_adv[i], x_adv[i] - x[i], target)
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
    overwrite: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Attack image files and write the adversarial images as 8-bit PNGs plus ``out_dir/attack.csv``.

    Images are attacked at the model's input resolution (shorter side resized, centre crop, as in
    evaluation), so the PNGs have that size. Untargeted label: the parent folder's name if it is one of
    the model's classes, else the model's clean prediction. ``options``: norm, steps, seed, target (a
    class name), restarts, n_queries, early_stop (default True: the first point that fools). The CSV's
    adversarial prediction and perturbation size are those of the written 8-bit image. Unreadable files
    get a row with their error. Nothing in ``out_dir`` that this call did not create is replaced unless
    ``overwrite`` (input files never are; see output_names).
    """
    check_target(attack, options.get("target"), model.class_names)
    out_dir = Path(out_dir)
    pairs, rows, batch = output_names(inputs, out_dir, overwrite=overwrite), [], []
    for j, (src, dst) in enumerate(progress(pairs, desc=attack, unit="img")):
        try:
            batch.append((src, dst, data.load_tensor(src, model.image_size)))
        except data.BadImageError as e:
            rows.append(dict.fromkeys(CSV_COLUMNS, "") | {"image": str(src), "error": e.reason})
        if batch and (len(batch) == batch_size or j == len(pairs) - 1):
            rows += _attack_batch(model, batch, attack, eps, options)
            batch = []
    order = {str(src): i for i, (src, _) in enumerate(pairs)}
    rows.sort(key=lambda r: order[r["image"]])
    table = csv_text([CSV_COLUMNS, *([row.get(c, "") for c in CSV_COLUMNS] for row in rows)])
    # surrogateescape: a file name that is not UTF-8 is written as the bytes it has on disk
    atomic_write_bytes(out_dir / CSV_NAME, table.encode(errors="surrogateescape"))
    return rows
