"""Several evaluate/certify report folders side by side: one Markdown table and one plot.

Every cell is an accuracy with its 95% Clopper-Pearson interval, so two models whose intervals overlap
are not read as different. Reports written before intervals were stored get them computed from n. Certify
and evaluate results of one split can also be paired photo by photo (paired_table), which tells recipes apart
where their intervals overlap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from ..attacks.eps import format_eps
from ..errors import DataError
from ..stats import mcnemar_exact
from .markdown import markdown_table, pct_ci

REPORT, CERTIFY, CV = "report.json", "certify.json", "cv.json"


@dataclass
class Reports:
    """What one folder holds: an evaluate report, a certify result, or both."""

    name: str
    evaluate: dict[str, Any] | None
    certify: dict[str, Any] | None


def load_reports(folder: str | Path, name: str | None = None) -> Reports:
    """Read FOLDER/report.json and FOLDER/certify.json (a path to either file works too), or a `train --cv`
    folder's cv.json as the evaluate report of its pooled held-out photos."""
    path = Path(folder)
    folder = path.parent if path.is_file() else path
    found = {f: json.loads((folder / f).read_text()) for f in (REPORT, CERTIFY, CV) if (folder / f).is_file()}
    if CV in found and REPORT not in found:
        from ..training.cv import as_report

        found[REPORT] = as_report(found[CV])
    if not found:
        written = "pass folders written by evaluate, certify or train --cv"
        raise DataError(f"{folder}: no {REPORT}, {CERTIFY} or {CV}; {written}")
    return Reports(name or folder.name, found.get(REPORT), found.get(CERTIFY))


def merge_rows(reports: list[Reports]) -> list[Reports]:
    """Folders given the same name share one row, in the order the names first appear (e.g. a model's
    evaluate report, its transfer-attack report and a certify result): each part of the row (noise,
    ensemble, transfer, certified) comes whole from the first folder that has it."""
    groups: dict[str, list[Reports]] = {}
    for r in reports:
        groups.setdefault(r.name, []).append(r)
    return [group[0] if len(group) == 1 else _merged(name, group) for name, group in groups.items()]


def _merged(name: str, group: list[Reports]) -> Reports:
    evaluates = [r.evaluate for r in group if r.evaluate]
    certifies = [r.certify for r in group if r.certify]
    if len(certifies) > 1:
        raise DataError(f"{len(certifies)} certify results are named {name!r}: one row holds one")
    if not evaluates:
        return Reports(name, None, certifies[0])
    first = evaluates[0]
    if any((e["n"], e["clean_accuracy"]) != (first["n"], first["clean_accuracy"]) for e in evaluates):
        raise DataError(
            f"the reports named {name!r} differ in their number of images or clean accuracy: a row is one "
            "model on one set of images"
        )

    def first_with(part: Any) -> list:
        return next((rows for e in evaluates if (rows := part(e))), [])

    def attacks(transfer: bool) -> Any:
        return lambda e: [row for row in e["results"] if (row["attack"] == "transfer") == transfer]

    merged = {
        **first,
        "corruptions": first_with(lambda e: e["corruptions"]),
        "ensemble": first_with(lambda e: e["ensemble"]),
        "results": first_with(attacks(transfer=False)) + first_with(attacks(transfer=True)),
        "flags": [flag for e in evaluates for flag in e["flags"]],
    }
    return Reports(name, merged, certifies[0] if certifies else None)


def _noise_stds(reports: list[Reports]) -> list[float]:
    stds = {
        c["std"] for r in reports if r.evaluate for c in r.evaluate["corruptions"] if c["std"] is not None
    }
    return sorted(stds)


def _threats(reports: list[Reports], attack: str | None) -> list[tuple[str, float]]:
    """(norm, eps) pairs of the ensemble (attack None) or of one attack's rows, in every report."""
    pairs = set()
    for r in reports:
        if r.evaluate:
            rows = r.evaluate["ensemble"] if attack is None else r.evaluate["results"]
            pairs |= {(e["norm"], e["eps"]) for e in rows if attack is None or e["attack"] == attack}
    return sorted(pairs)


def _cell(entry: dict[str, Any] | None, key: str, n: int) -> str:
    return "–" if entry is None else pct_ci(entry[key], n, entry.get("ci95"))


def compare_table(reports: list[Reports], radii: tuple[float, ...] = (0.25, 0.5)) -> list[str]:
    """Markdown rows: one per report (merge_rows first to give folders that share a name one row); clean,
    noise, ensemble per eps, transfer, certified radii."""
    stds, ensemble, transfer = _noise_stds(reports), _threats(reports, None), _threats(reports, "transfer")
    certify = any(r.certify for r in reports)
    header = ["report", "n", "clean"] + [f"noise std {s:g}" for s in stds]
    header += [f"ensemble {norm} {format_eps(e)}" for norm, e in ensemble]
    header += [f"transfer {norm} {format_eps(e)}" for norm, e in transfer]
    header += [f"certified r={r:g}" for r in radii] if certify else []
    rows = []
    for r in reports:
        row = [r.name]
        if r.evaluate:
            ev, n = r.evaluate, r.evaluate["n"]
            noise = {c["std"]: c for c in ev["corruptions"] if c["std"] is not None}
            by_eps = {(e["norm"], e["eps"]): e for e in ev["ensemble"]}
            by_transfer = {(e["norm"], e["eps"]): e for e in ev["results"] if e["attack"] == "transfer"}
            row += [str(n), pct_ci(ev["clean_accuracy"], n, ev.get("clean_ci95"))]
            row += [_cell(noise.get(s), "accuracy", n) for s in stds]
            row += [_cell(by_eps.get(t), "robust_accuracy", n) for t in ensemble]
            row += [_cell(by_transfer.get(t), "robust_accuracy", n) for t in transfer]
        else:
            row += [str(r.certify["n_images"]), "–"] + ["–"] * (len(stds) + len(ensemble) + len(transfer))
        if certify:
            row += [_certified(r.certify, radius) for radius in radii]
        rows.append(row)
    return markdown_table(header, rows)


def _certified(result: dict[str, Any] | None, radius: float) -> str:
    """Certified accuracy at `radius`: the curve's value at the largest listed radius not above it ("–" below
    a --min-radius run's curve, which starts at its radius)."""
    curve = [] if result is None else result["certified_accuracy"]
    at = [row for row in curve if row["radius"] <= radius + 1e-12]
    if not at:
        return "–"
    row = max(at, key=lambda row: row["radius"])
    return pct_ci(row["accuracy"], result["n_images"], row.get("ci95"))


PAIRED_NOTE = (
    "Paired on the images both reports hold: +k are images right in that column (clean, surviving the "
    "ensemble, or certified correct at the radius) only in this row, -k only in the first row; p is the "
    "exact two-sided McNemar test. On few images two recipes' intervals overlap even when one is better; "
    "the images they disagree on are the evidence."
)


def _image_keys(records: list[dict[str, Any]]) -> list[str]:
    """Each image's path below the folder all of a report's images share (class/file for one split,
    split/class/file for a cross-validation's pooled train and valid photos), so that two runs of the same
    photos pair up wherever the data set lies."""
    paths = [PurePath(im["image"]) for im in records]
    if not paths:
        return []
    shared = PurePath(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(shared).as_posix() for p in paths]


def _certified_at(result: dict[str, Any], radius: float) -> dict[str, bool] | None:
    """Image key -> certified correct at `radius`, for the readable images; None below a --min-radius run's
    smallest radius, where images that stopped early were not measured."""
    if radius < result.get("min_radius", 0.0) - 1e-12:
        return None
    records = result["images"]
    return {
        key: bool(im["correct"] and im["radius"] is not None and im["radius"] >= radius - 1e-12)
        for key, im in zip(_image_keys(records), records, strict=True)
        if not im.get("error")
    }


def paired_table(reports: list[Reports], radii: tuple[float, ...]) -> list[str]:
    """Markdown rows: each report with per-image outcomes against the first, on the images both hold (see
    PAIRED_NOTE)."""
    results = [(r, columns) for r in reports if (columns := _paired_columns(r, radii))]
    if len(results) < 2:
        raise DataError(
            "--paired needs at least two reports with per-image outcomes: certify results, or evaluate "
            "reports and train --cv folders measured by this version (older ones lack them)"
        )
    (first, first_columns), names = results[0], list(dict.fromkeys(c for _, cs in results for c in cs))
    rows = []
    for other, columns in results[1:]:
        paired, cells = "–", []
        for name in names:
            before, after = first_columns.get(name), columns.get(name)
            if before is None or after is None:
                cells.append("–")
                continue
            keys = before.keys() & after.keys()
            if not keys:
                raise DataError(f"{first.name} and {other.name} share no image: pair runs of one split")
            paired = str(len(keys))
            gained = sum(after[k] and not before[k] for k in keys)
            lost = sum(before[k] and not after[k] for k in keys)
            cells.append(f"+{gained}/-{lost} (p {mcnemar_exact(gained, lost):.2g})")
        rows.append([other.name, paired, *cells])
    return markdown_table(["against " + first.name, "images paired", *names], rows)


def _paired_columns(r: Reports, radii: tuple[float, ...]) -> dict[str, dict[str, bool] | None]:
    """Column -> image key -> right there (None where not measured), for what a folder holds per image:
    an evaluate report's clean and ensemble outcomes, a certify result's certified radii."""
    columns: dict[str, dict[str, bool] | None] = {}
    records = (r.evaluate or {}).get("images") or []
    if records:
        keys = _image_keys(records)
        columns["clean"] = {k: im["correct"] for k, im in zip(keys, records, strict=True)}
        for e in r.evaluate["ensemble"]:
            survived = {k: im["robust"][str(e["eps"])] for k, im in zip(keys, records, strict=True)}
            columns[f"ensemble {e['norm']} {format_eps(e['eps'])}"] = survived
    if r.certify:
        columns |= {f"certified r={radius:g}": _certified_at(r.certify, radius) for radius in radii}
    return columns


def compare_markdown(
    reports: list[Reports], radii: tuple[float, ...] = (0.25, 0.5), paired: bool = False
) -> str:
    lines = ["# Robustness compared", "", "Accuracies with their 95% Clopper-Pearson intervals.", ""]
    lines += compare_table(reports, radii)
    flags = [f"- {r.name}: {f['flag']}" for r in reports if r.evaluate for f in r.evaluate["flags"]]
    lines += ["", "Sanity flags:" if flags else "No sanity flag in any report.", *flags]
    if paired:
        lines += ["", "## Paired", "", PAIRED_NOTE, "", *paired_table(reports, radii)]
    return "\n".join(lines) + "\n"


def write_comparison(
    reports: list[Reports], out: str | Path, radii: tuple[float, ...] = (0.25, 0.5), paired: bool = False
) -> Path:
    """OUT/compare.md and, when any report has an ensemble, OUT/compare.png."""
    from ..runtime import atomic_write_bytes
    from .plots import plot_comparison

    out = Path(out)
    atomic_write_bytes(out / "compare.md", compare_markdown(reports, radii, paired).encode())
    if any(r.evaluate and r.evaluate["ensemble"] for r in reports):
        plot_comparison([(r.name, r.evaluate) for r in reports if r.evaluate], out / "compare.png")
    return out / "compare.md"
