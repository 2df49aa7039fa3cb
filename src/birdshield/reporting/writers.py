"""Report folders: what `evaluate` and `certify` leave on disk (every file written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runtime import atomic_write_bytes, atomic_write_json
from .markdown import certify_table, report_markdown
from .plots import plot_accuracy_vs_eps, plot_certified, plot_examples


def write_evaluate_report(
    report: dict[str, Any], out_dir: str | Path, examples: list[dict[str, Any]] | None = None
) -> Path:
    """Write report.json, report.md, accuracy_vs_eps.png and (with examples) examples.png; -> report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    plots = []
    if report["results"]:
        plot_accuracy_vs_eps(report, out / "accuracy_vs_eps.png")
        plots.append("accuracy_vs_eps.png")
    if examples:
        plot_examples(examples, out / "examples.png")
        plots.append("examples.png")
    atomic_write_bytes(out / "report.md", report_markdown(report, plots).encode())
    return out / "report.md"


def write_certify_report(result: dict[str, Any], out_dir: str | Path) -> str:
    """certify.json, certify.md and certified_accuracy.png in ``out_dir``; returns the Markdown table."""
    out = Path(out_dir)
    table = certify_table(result)
    atomic_write_json(out / "certify.json", result)
    atomic_write_bytes(out / "certify.md", table.encode())
    plot_certified(result, out / "certified_accuracy.png")
    return table
