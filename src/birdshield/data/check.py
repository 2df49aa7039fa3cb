"""`data check`: a dataset health report and its text rendering.

`check` reads every image once and reports, without raising, per-class counts per split, unreadable images,
classes missing from or extra to a split, and images shared across splits: identical files (MD5) and near
duplicates (64-bit dHash within a Hamming distance). `format_check` renders the report for a terminal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .images import MAX_PIXELS, BadImageError, _decode, read_image_bytes
from .layouts import SPLITS, _assign, _extra_classes, _root_path, _Scan, _scan

__all__ = ["check", "format_check"]

log = logging.getLogger("birdshield")

_MAX_NEAR_PAIRS = 10_000  # flat images all hash alike; cap the report instead of listing O(n^2) pairs
# Large images are decoded shrunk to a shorter side of at least 3 x this (images.REDUCING_GAP): the 9 x 8
# hash needs no more, and a few 100 MP images decoded at once in full would take gigabytes.
_HASHED_SIDE = 64


@dataclass
class _Inspected:
    md5: str | None = None
    dhash: int | None = None
    reason: str | None = None  # why the image is unreadable


def _dhash(img: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9x8 thumbnail brighter than its right neighbour."""
    thumb = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = np.packbits(thumb[:, :-1] > thumb[:, 1:])
    return int.from_bytes(bits.tobytes(), "big")


def _inspect(path: Path) -> _Inspected:
    try:
        data = read_image_bytes(path)
        img = _decode(path, data, MAX_PIXELS, min_side=_HASHED_SIDE)
        dhash = _dhash(img)
    except BadImageError as e:
        return _Inspected(reason=e.reason)
    except Exception as e:  # MemoryError included: the report must still come out
        return _Inspected(reason=f"cannot decode ({type(e).__name__}: {e})")
    return _Inspected(hashlib.md5(data, usedforsecurity=False).hexdigest(), dhash)


def _inspect_all(paths: Sequence[Path]) -> list[_Inspected]:
    """Decode every image once, in threads (Pillow and hashlib release the GIL); progress bar on a TTY."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    # Warning filters are process-global: set them once here rather than racily inside each thread.
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, min(8, cpus))) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = pool.map(_inspect, paths)
        return list(tqdm(results, total=len(paths), desc="checking images", unit="img", disable=None))


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)


def _near_pairs(hashes: np.ndarray, groups: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with Hamming distance <= threshold between items of different groups, in blocks."""
    pairs: list[tuple[int, int, int]] = []
    labels = np.unique(groups)
    for ga_pos, ga in enumerate(labels):
        a_idx = np.flatnonzero(groups == ga)
        b_idx = np.flatnonzero(np.isin(groups, labels[ga_pos + 1 :]))
        if not len(a_idx) or not len(b_idx):
            continue
        block = max(1, (1 << 22) // len(b_idx))  # ~32 MB of uint64 per block
        for start in range(0, len(a_idx), block):
            rows = a_idx[start : start + block]
            dist = _popcount(hashes[rows, None] ^ hashes[None, b_idx])
            ii, jj = np.nonzero(dist <= threshold)
            pairs += zip(rows[ii].tolist(), b_idx[jj].tolist(), dist[ii, jj].tolist(), strict=True)
    return pairs


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _class_report(scan: _Scan, files: dict[str, dict[str, list[Path]]]) -> dict[str, Any]:
    present = [s for s in SPLITS if s in files]
    counts = {s: {c: len(files[s].get(c, [])) for c in sorted({*scan.classes, *files[s]})} for s in present}
    counts.update({s: {} for s in SPLITS if s not in files})
    missing = {s: [c for c in scan.classes if not counts[s].get(c)] for s in present if s != "train"}
    empty = [_rel(p, scan.root) for p in scan.empty]
    return {
        "classes": list(scan.classes),
        "counts": counts,
        "totals": {s: sum(counts[s].values()) for s in SPLITS},
        "empty_classes": empty,
        "missing": {s: missing.get(s, []) for s in SPLITS[1:]},
        "extra": _extra_classes(scan),
    }


def _duplicate_report(
    items: list[tuple[str, Path]], found: list[_Inspected], root: Path, threshold: int
) -> dict[str, Any]:
    ok = [i for i, f in enumerate(found) if f.reason is None]
    by_md5: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_md5[str(found[i].md5)].append(i)
    exact = [
        {"paths": [_rel(items[i][1], root) for i in group], "splits": [items[i][0] for i in group]}
        for group in by_md5.values()
        if len({items[i][0] for i in group}) > 1
    ]
    hashes = np.array([found[i].dhash for i in ok], dtype=np.uint64)
    groups = np.array([SPLITS.index(items[i][0]) for i in ok], dtype=np.int64)
    near = []
    for a, b, dist in sorted(_near_pairs(hashes, groups, threshold), key=lambda t: (t[2], t[0], t[1])):
        ia, ib = ok[a], ok[b]
        if found[ia].md5 != found[ib].md5:
            (split_a, path_a), (split_b, path_b) = items[ia], items[ib]
            near.append(
                {
                    "a": _rel(path_a, root),
                    "b": _rel(path_b, root),
                    "distance": dist,
                    "splits": [split_a, split_b],
                }
            )
    if len(near) > _MAX_NEAR_PAIRS:
        log.warning("%d near-duplicate pairs found; reporting the closest %d", len(near), _MAX_NEAR_PAIRS)
        near = near[:_MAX_NEAR_PAIRS]
    return {"exact_duplicates": exact, "near_duplicates": near}


def check(root: str | Path, *, near_duplicate_threshold: int = 4, seed: int = 0) -> dict[str, Any]:
    """Health report of a dataset (JSON-serialisable): counts, unreadable images, class mismatches, leaks.

    Dataset problems are reported, not raised; only an unrecognisable layout raises DataError. Splits of the
    "folders" and "cub" layouts are the ones `discover` makes with the same seed and default fractions.
    """
    if not 0 <= near_duplicate_threshold <= 64:
        raise ValueError(f"near_duplicate_threshold must be 0..64 bits, got {near_duplicate_threshold}")
    scan = _scan(_root_path(root))
    files = _assign(scan, seed, 0.15, 0.15)
    items = [(s, p) for s in SPLITS for _, paths in sorted(files.get(s, {}).items()) for p in paths]
    found = _inspect_all([p for _, p in items])
    unreadable = [
        {"path": _rel(p, scan.root), "reason": f.reason}
        for (_, p), f in zip(items, found, strict=True)
        if f.reason
    ]
    report: dict[str, Any] = {"root": str(scan.root), "layout": scan.layout}
    report |= _class_report(scan, files)
    report["unreadable"] = unreadable
    report |= _duplicate_report(items, found, scan.root, near_duplicate_threshold)
    report["problems"] = (
        len(unreadable)
        + len(report["empty_classes"])
        + sum(map(len, report["missing"].values()))
        + sum(map(len, report["extra"].values()))
        + len(report["exact_duplicates"])
        + len(report["near_duplicates"])
    )
    return report


def _count_table(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    splits = [s for s in SPLITS if counts.get(s)]
    names = sorted({c for s in splits for c in counts[s]})
    width = max([len("class"), *map(len, names)])
    lines = ["class".ljust(width) + "".join(f"{s:>8}" for s in splits)]
    lines += [name.ljust(width) + "".join(f"{counts[s].get(name, 0):>8}" for s in splits) for name in names]
    return lines


def _problem_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def section(title: str, entries: list[str]) -> None:
        if entries:
            lines.append(f"{title} ({len(entries)}):")
            lines.extend(f"  {entry}" for entry in entries)

    section("unreadable images", [f"{u['path']}: {u['reason']}" for u in report["unreadable"]])
    section("classes without images", report["empty_classes"])
    for split, names in report["missing"].items():
        section(f"classes with no {split} images", names)
    for split, names in report["extra"].items():
        section(f"classes in {split} but not in train", names)
    exact = [zip(d["paths"], d["splits"], strict=True) for d in report["exact_duplicates"]]
    section(
        "identical files in different splits",
        [" == ".join(f"{p} ({s})" for p, s in group) for group in exact],
    )
    section(
        "near-duplicate images in different splits",
        [f"{d['a']} ~ {d['b']} (distance {d['distance']})" for d in report["near_duplicates"]],
    )
    return lines


def format_check(report: dict[str, Any]) -> str:
    """Human-readable rendering of a `check` report."""
    totals = ", ".join(f"{s} {report['totals'].get(s, 0)}" for s in SPLITS)
    lines = [
        f"dataset: {report['root']} (layout: {report['layout']}, {len(report['classes'])} classes)",
        f"images: {totals}",
        "",
        *_count_table(report),
        "",
    ]
    problems = _problem_lines(report)
    if problems:
        lines += [f"{report['problems']} problem(s) found:", *problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
