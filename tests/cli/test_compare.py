"""`birdshield compare`: reports side by side, each cell with its interval; folders given one name share a
row; a folder without a report is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

from birdshield.cli import main
from birdshield.reporting.compare import compare_table, load_reports


def _report(n: int, clean: int, robust: list[int], eps: list[float]) -> dict:
    return {
        "n": n,
        "clean_accuracy": clean / n,
        "corruptions": [{"std": 0.1, "label": "gaussian_noise std=0.1", "accuracy": clean / n}],
        "ensemble": [
            {"norm": "linf", "eps": e, "robust_accuracy": r / n} for e, r in zip(eps, robust, strict=True)
        ],
        "results": [],
        "flags": [],
    }


def test_compare_puts_reports_side_by_side_with_intervals(tmp_path: Path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(_report(150, 145, [80, 40], [1 / 255, 2 / 255])))
    (tmp_path / "b" / "report.json").write_text(json.dumps(_report(30, 27, [10], [2 / 255])))
    table = compare_table([load_reports(tmp_path / "a"), load_reports(tmp_path / "b")])
    assert "ensemble linf 1/255" in table[0] and "ensemble linf 2/255" in table[0]
    row_a, row_b = table[2], table[3]
    assert "96.7% (92.4-98.9)" in row_a and "26.7% (19.8-34.5)" in row_a
    assert "| – |" in row_b  # b has no 1/255 entry
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "compare.md").read_text().count("\n| ") == 3
    assert (tmp_path / "c" / "compare.png").stat().st_size > 0
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_compare_merges_folders_given_one_name_into_one_row(tmp_path: Path, capsys):
    quick = _report(150, 145, [80, 40], [1 / 255, 2 / 255])
    transfer = {**_report(150, 145, [120, 100], [4 / 255, 8 / 255]), "corruptions": []}
    transfer["results"] = [
        {"attack": "transfer", "norm": "linf", "eps": e, "robust_accuracy": r / 150}
        for e, r in ((4 / 255, 120), (8 / 255, 100))
    ]
    for name, report in {
        "quick": quick,
        "transfer": transfer,
        "other": _report(150, 140, [1], [2 / 255]),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    folders = [str(tmp_path / f) for f in ("quick", "transfer", "other")]
    assert main(["compare", *folders, "--names", "model,model,other"]) == 0
    header, _, model, other = capsys.readouterr().out.splitlines()[4:8]
    # The transfer report's own ensemble (transfer only, at 4/255 and 8/255) is not taken as the model's.
    assert "ensemble linf 4/255" not in header and "transfer linf 8/255" in header
    assert model.startswith("| model | 150 | 96.7%") and "66.7% (58.5-74.1)" in model and "| – |" not in model
    assert other.startswith("| other |")
    assert main(["compare", folders[0], folders[2], "--names", "model,model"]) == 2  # not one model
    assert "differ in their number of images or clean accuracy" in capsys.readouterr().err


def _certify(radii: list[float | None], min_radius: float = 0.0, folder: str = "data/test") -> dict:
    """A certify result over images 0..k-1 of one class: radius None abstains."""
    images = [
        {"image": f"{folder}/wren/{i}.jpg", "label": 0, "correct": r is not None, "radius": r}
        for i, r in enumerate(radii)
    ]
    return {"n_images": len(images), "min_radius": min_radius, "certified_accuracy": [], "images": images}


def test_paired_counts_the_images_two_certify_runs_disagree_on(tmp_path: Path, capsys):
    first = [1.0] * 7 + [None] * 3 + [0.6] * 2
    second = [None] * 7 + [1.0] * 3 + [0.6] * 2  # 7 lost, 3 gained at r=0.5; the last two agree
    for name, radii, where in (("a", first, "x"), ("b", second, "elsewhere/y")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "certify.json").write_text(json.dumps(_certify(radii, 0.5, where)))
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["compare", *folders, "--radii", "0.25,0.5,0.75", "--paired"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    # r=0.25 lies below --min-radius (not measured); at 0.75 the two 0.6 images fall out of both.
    assert row == "| b | 12 | – | +3/-7 (p 0.34) | +3/-7 (p 0.34) |"
    assert main(["compare", folders[0], "--paired"]) == 2
    assert "at least two reports with per-image outcomes" in capsys.readouterr().err


def test_paired_counts_the_photos_two_evaluations_disagree_on(tmp_path: Path, capsys):
    eps = 2 / 255
    outcomes = {  # (clean, survived 2/255) per photo, for each run
        "a": [(True, True)] * 4 + [(True, False)] * 5 + [(False, False)],
        "b": [(True, True)] * 4 + [(True, True)] * 5 + [(True, False)],  # +5 at 2/255, +1 clean
    }
    for name, rows in outcomes.items():
        report = _report(len(rows), sum(c for c, _ in rows), [sum(r for _, r in rows)], [eps])
        report["images"] = [
            {"image": f"{name}/data/test/wren/{i}.jpg", "correct": c, "robust": {str(eps): r}}
            for i, (c, r) in enumerate(rows)
        ]
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--paired"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[-3:]
    assert header == "| against a | images paired | clean | ensemble linf 2/255 |"
    assert row == "| b | 10 | +1/-0 (p 1) | +5/-0 (p 0.062) |"
