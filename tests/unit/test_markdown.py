"""Markdown tables keep one cell per column whatever free text (class names, folder names) is in them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from birdshield.reporting.compare import compare_table, load_reports
from birdshield.reporting.markdown import markdown_table, report_markdown

CELL_BORDER = re.compile(r"(?<!\\)\|")  # a pipe no backslash escapes


def _cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [cell.strip() for cell in CELL_BORDER.split(line)[1:-1]]


def _tables(markdown: str) -> list[list[str]]:
    """The rows (lines) of each table in `markdown`."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _report(classes: list[str]) -> dict:
    n = 4 * len(classes)
    return {
        "model": {"run_dir": "runs/a", "arch": "test_efficientnet", "classes": len(classes)},
        "config": {"norm": "linf", "seed": 0},
        "split": "test",
        "n": n,
        "seconds": 1.0,
        "clean_accuracy": 0.5,
        "flags": [],
        "results": [],
        "corruptions": [],
        "per_class": [{"class": c, "n": 4, "accuracy": 0.5} for c in classes],
        "confused_pairs": [{"true": classes[0], "predicted": classes[1], "count": 2}],
        "trained_against": None,
    }


def test_a_pipe_in_a_class_name_stays_in_its_cell() -> None:
    classes = ["a | b", "c|d|e", "plain", "ends with \\"]
    markdown = report_markdown(_report(classes), plots=[])
    per_class, confused = _tables(markdown)
    assert [len(_cells(row)) for row in per_class] == [3] * len(per_class)
    assert [_cells(row)[0] for row in per_class[2:]] == [c.replace("|", "\\|") for c in classes]
    assert [len(_cells(row)) for row in confused] == [3, 3, 3]
    assert _cells(confused[2])[:2] == ["a \\| b", "c\\|d\\|e"]


def test_a_line_break_in_a_cell_stays_in_its_row() -> None:
    lines = markdown_table(["name", "n"], [["two\nlines", "1"], ["x|y", "2"]])
    assert lines == ["| name | n |", "|---|---|", "| two lines | 1 |", "| x\\|y | 2 |"]


def test_a_pipe_in_a_report_folder_name_stays_in_its_cell(tmp_path: Path) -> None:
    report = {"n": 10, "clean_accuracy": 0.5, "corruptions": [], "ensemble": [], "results": [], "flags": []}
    for name in ("model|noise", "plain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    table = compare_table([load_reports(tmp_path / "model|noise"), load_reports(tmp_path / "plain")])
    assert [len(_cells(row)) for row in table] == [3, 3, 3, 3]
    assert _cells(table[2])[0] == "model\\|noise"
