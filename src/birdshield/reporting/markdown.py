"""Human-readable reports in Markdown: the evaluation's report.md and printed summary, and certify's table.

Pure text from the report dicts (no torch, no matplotlib).
"""

from __future__ import annotations

from typing import Any

from ..attacks.eps import format_eps
from ..attacks.registry import get_spec
from ..stats import ci95_of

DEFAULT_RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)  # certify's table rows (always on its curve)


def pct_ci(accuracy: float, n: int, ci: list[float] | None = None) -> str:
    """'57.3% (49.0-65.3)': the accuracy and its 95% Clopper-Pearson interval (computed if not stored)."""
    low, high = ci or ci95_of(accuracy, n)
    return f"{100 * accuracy:.1f}% ({100 * low:.1f}-{100 * high:.1f})"


CI_NOTE = "95% Clopper-Pearson intervals in parentheses"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table. Cells hold free text (class names, folder names): a `|` in one is
    escaped and a line break becomes a space, so every row keeps its cells."""
    return [_row(header), "|" + "---|" * len(header)] + [_row(r) for r in rows]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(" ".join(str(c).splitlines()).replace("|", "\\|") for c in cells) + " |"


def robustness_table(report: dict[str, Any]) -> list[str]:
    """Markdown rows: one line per attack in cascade order, then the ensemble; one column per eps."""
    eps = [e["eps"] for e in report["ensemble"]]
    n = report["n"]
    acc = {(r["attack"], r["eps"]): pct_ci(r["robust_accuracy"], n, r.get("ci95")) for r in report["results"]}
    attacks = list(dict.fromkeys(r["attack"] for r in report["results"]))
    rows = [[a] + [acc[(a, e)] for e in eps] for a in attacks]
    ensemble = [f"**{pct_ci(e['robust_accuracy'], n, e.get('ci95'))}**" for e in report["ensemble"]]
    rows.append(["**ensemble (worst case)**", *ensemble])
    return markdown_table(["attack"] + [format_eps(e) for e in eps], rows)


def _flag_lines(report: dict[str, Any]) -> list[str]:
    if not report["flags"]:
        return ["No sanity flags raised."]
    return [f"- **{f['flag']}**: {f['detail']}" for f in report["flags"]]


def _mode_note(report: dict[str, Any]) -> str:
    if report["config"].get("independent"):
        return "Independent mode: each attack ran on every clean-correct image; ensemble = correct under all."
    return (
        "Cascade: each row is the accuracy left after that attack *and every row above it*; an attack "
        "only ran on the images still classified correctly."
    )


def format_summary(report: dict[str, Any]) -> str:
    """The few lines printed after an evaluation: clean, robust table, noise at the explicit stds, flags."""
    norm = report["ensemble"][0]["norm"] if report["ensemble"] else ""
    clean = pct_ci(report["clean_accuracy"], report["n"], report.get("clean_ci95"))
    lines = [f"clean accuracy: {clean} of {report['n']} images ({CI_NOTE})"]
    if "top5_accuracy" in report:
        lines.append(
            f"top-5 accuracy: {pct_ci(report['top5_accuracy'], report['n'], report.get('top5_ci95'))}"
        )
    lines.append("")
    if report["model"].get("defense"):
        lines = [f"defence: {report['model']['defense']} (attacked through it with BPDA)", *lines]
    if report["results"]:
        lines += [f"robust accuracy ({norm}); {_mode_note(report)}", *robustness_table(report), ""]
    noise = [c for c in report["corruptions"] if c["std"] is not None]
    if noise:
        lines += [
            "; ".join(f"{c['label']}: {pct_ci(c['accuracy'], report['n'], c.get('ci95'))}" for c in noise),
            "",
        ]
    return "\n".join(lines + ["sanity flags:", *_flag_lines(report)])


def report_markdown(report: dict[str, Any], plots: list[str]) -> str:
    m, cfg = report["model"], report["config"]
    trained_s = _trained_text(report.get("trained_against"))
    lines = [
        "# Robustness report",
        "",
        f"- model: `{m['run_dir']}` ({m['arch']}, {m['classes']} classes), trained against: {trained_s}",
        *([f"- defence: `{m['defense']}`, attacked through it (BPDA)"] if m.get("defense") else []),
        *(
            ["- the model averages over the mirror image (--tta-flip), attacked through it"]
            if m.get("tta_flip")
            else []
        ),
        f"- data: split `{report['split']}`, {report['n']} images"
        + (f" ({len(report['bad_images'])} unreadable, left out)" if report.get("bad_images") else ""),
        f"- attacks ({cfg['norm']}): {_attacks_text(report)}; seed {cfg['seed']}; "
        f"{report['seconds']:.0f} s in all",
        "",
        f"## Clean accuracy: {pct_ci(report['clean_accuracy'], report['n'], report.get('clean_ci95'))}",
        "",
        *(
            [f"Top-5 accuracy: {pct_ci(report['top5_accuracy'], report['n'], report.get('top5_ci95'))}", ""]
            if "top5_accuracy" in report
            else []
        ),
        f"Every accuracy is of the {report['n']} images, with its {CI_NOTE}.",
        "",
        "## Sanity flags",
        "",
        *_flag_lines(report),
        "",
    ]
    if report["results"]:
        lines += [f"## Adversarial robust accuracy ({cfg['norm']})", "", _mode_note(report), ""]
        lines += [*robustness_table(report), "", *_detail_table(report), ""]
    for s in report.get("skipped", []):
        lines.append(f"- skipped {s['attack']}: {s['reason']}")
    if report["corruptions"]:
        rows = [
            [c["label"], pct_ci(c["accuracy"], report["n"], c.get("ci95"))] for c in report["corruptions"]
        ]
        lines += ["", "## Corruptions", "", *markdown_table(["corruption", "accuracy"], rows), ""]
    lines += _class_sections(report)
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _class_sections(report: dict[str, Any], most: int = 15) -> list[str]:
    """The worst classes and the most confused pairs: readable at 500 classes (all are in report.json)."""
    classes, pairs = report.get("per_class") or [], report.get("confused_pairs") or []
    lines = []
    if len(classes) > 1:
        shown = classes[:most]
        rows = [[c["class"], str(c["n"]), pct_ci(c["accuracy"], c["n"], c.get("ci95"))] for c in shown]
        more = f" ({len(shown)} of {len(classes)}; all in report.json)" if len(classes) > most else ""
        lines += [
            "",
            f"## Clean accuracy per class, worst first{more}",
            "",
            *markdown_table(["class", "n", "accuracy"], rows),
        ]
    if pairs:
        rows = [[p["true"], p["predicted"], str(p["count"])] for p in pairs[:most]]
        header = ["true", "predicted as", "images"]
        lines += ["", "## Most confused (clean)", "", *markdown_table(header, rows)]
    return lines + ([""] if lines else [])


def _attacks_text(report: dict[str, Any]) -> str:
    cfg, parts = report["config"], []
    for a in dict.fromkeys(r["attack"] for r in report["results"]):
        options = get_spec(a).options
        if "n_queries" in options:
            parts.append(f"{a} ({cfg['square_queries']} queries)")
        elif "steps" not in options:
            parts.append(a)
        else:
            restarts = f" x{cfg['restarts']} restarts" if a == "pgd" and cfg["restarts"] > 1 else ""
            parts.append(f"{a} ({cfg['steps'].get(a, cfg['default_steps'])} steps{restarts})")
    return ", ".join(parts) or "none"


def _trained_text(trained: dict[str, Any] | None) -> str:
    if trained is None:
        return "unknown (no training metadata)"
    adv = trained.get("adversarial") or {}
    parts = [f"{k} {v:g}" for k, v in trained.items() if k.startswith("noise") and v]
    if adv.get("method", "none") != "none":
        parts.insert(0, ", ".join(f"{k} {format_eps(v) if k == 'eps' else v}" for k, v in adv.items()))
    return "; ".join(parts) or "nothing (standard training)"


def _detail_table(report: dict[str, Any]) -> list[str]:
    rows = [
        [r["attack"], format_eps(r["eps"]), str(r["n_attacked"]), str(r["fooled"]), f"{r['seconds']:.1f}"]
        for r in report["results"]
    ]
    return markdown_table(["attack", "eps", "images attacked", "newly fooled", "seconds"], rows)


# ------------------------------------------------------------------------------------------- certify


def certify_table(result: dict[str, Any]) -> str:
    """Markdown: parameters and certified accuracy at the standard radii."""
    curve = {row["radius"]: row for row in result["certified_accuracy"]}
    n = result["n_images"]
    lines = [
        f"Randomized smoothing: sigma={result['sigma']}, n0={result['n0']}, n={result['n']}, "
        f"alpha={result['alpha']}, {result['n_images']} images "
        f"({result['n_unreadable']} unreadable skipped)",
        "",
        f"- base model clean accuracy: {100 * result['clean_accuracy_of_base_model']:.1f}%",
        f"- abstained: {100 * result['abstain_rate']:.1f}%",
        f"- time: {result['seconds_per_image']:.3f} s per image"
        + (f" ({result['runtime']} runtime)" if result.get("runtime") else ""),
        "",
        f"| L2 radius | certified accuracy ({CI_NOTE}) |",
        "|---:|---:|",
    ]
    for r in DEFAULT_RADII:  # a --min-radius run has no curve below its radius
        row = curve.get(r)
        cell = pct_ci(row["accuracy"], n, row.get("ci95")) if row else "not measured (--min-radius)"
        lines.append(f"| {r:.3f} | {cell} |")
    return "\n".join(lines) + "\n"
