"""Prediction: a folder of good and bad files gives a row per file; grading format; imagenet-birds default."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import BIRDS_MINI, TINY_CLASSES, needs_birds_mini, textured_image
from PIL import Image

from birdshield.cli import main


def _odd_files(folder: Path) -> dict[str, bool]:
    """Write every kind of awkward file; map name -> whether it should be predicted (False: an error row).
    Non-image files (notes.txt, birds.csv, README.md) are not listed: predict skips them."""
    folder.mkdir(parents=True, exist_ok=True)
    img = textured_image(1, size=(60, 40), tint=1)
    img.save(folder / "10.jpg")
    img.convert("CMYK").save(folder / "2.jpg")
    img.convert("RGBA").save(folder / "3.png")
    Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257).save(folder / "4.png")  # 16-bit
    img.convert("L").save(folder / "5.png")
    good = (folder / "10.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (folder / "notes.txt").write_text("a text file among the photos\n")
    (folder / "birds.csv").write_text("filepaths,labels\n10.jpg,A\n")
    (folder / "README.md").write_text("# photos\n")
    (folder / "sub").mkdir()
    img.save(folder / "sub" / "1.jpg")
    return {
        "10.jpg": True,
        "2.jpg": True,
        "3.png": True,
        "4.png": True,
        "5.png": True,
        "sub/1.jpg": True,
        "truncated.jpg": False,
        "corrupt.jpg": False,
    }


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_names_good_files_and_reports_bad_ones(tiny_run: Path, tmp_path: Path, capsys):
    expected = _odd_files(tmp_path / "imgs")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--top-k", "2"]) == 0
    rows = {Path(r["image"]).relative_to(tmp_path / "imgs").as_posix(): r for r in _read(out)}
    assert set(rows) == set(expected)  # the text files are skipped, not reported as bad images
    err = capsys.readouterr().err
    assert "skipped 3 non-image file(s) in the folders (README.md, birds.csv, notes.txt)" in err
    for name, ok in expected.items():
        row = rows[name]
        if ok:
            assert row["species"] in TINY_CLASSES and row["species_2"] in TINY_CLASSES and not row["error"]
            assert 0 <= float(row["confidence_2"]) <= float(row["confidence"]) <= 1
        else:
            assert row["error"] and not row["species"], name


def test_grading_format_is_sorted_by_numeric_file_name(tiny_run: Path, tmp_path: Path):
    for name in ("10.jpg", "2.jpg", "1.jpg", "b.jpg"):
        textured_image(3).save(tmp_path / name)
    out = tmp_path / "grading.csv"
    assert main(["predict", str(tiny_run), str(tmp_path), "--out", str(out), "--format", "grading"]) == 0
    rows = _read(out)
    assert list(rows[0]) == ["image", "specie"]
    assert [r["image"] for r in rows] == ["1.jpg", "2.jpg", "10.jpg", "b.jpg"]
    assert all(r["specie"] in TINY_CLASSES for r in rows)


def test_predict_without_a_run_uses_imagenet_birds(tmp_path: Path, capsys):
    src = sorted((BIRDS_MINI / "test" / "ANNA HUMMINGBIRD").glob("*.jpg"))[:2] if BIRDS_MINI.is_dir() else []
    if not src:
        textured_image(0, size=(224, 224)).save(tmp_path / "0.jpg")
        src = [tmp_path / "0.jpg"]
    assert main(["predict", *map(str, src), "--out", "-"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(src) and all(r["species"] for r in rows)
    if BIRDS_MINI.is_dir():
        assert all(r["species"] == "hummingbird" for r in rows)


def test_missing_path_is_a_clear_error(tiny_run: Path, tmp_path: Path, capsys):
    assert main(["predict", str(tiny_run), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


@needs_birds_mini
@pytest.mark.slow
def test_probe_on_real_photos_then_predict_the_test_split(tmp_path: Path):
    """Real photos end to end: a cached-feature linear probe (seconds) predicts the test folder."""
    run = tmp_path / "run"
    assert main(["train", str(BIRDS_MINI), "--out", str(run), "--depth", "probe", "--workers", "0"]) == 0
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(BIRDS_MINI / "test"), "--out", str(out)]) == 0
    rows = _read(out)
    assert len(rows) == 150
    accuracy = np.mean([Path(r["image"]).parent.name == r["species"] for r in rows])
    assert accuracy >= 0.85  # measured 0.96+; chance is 1/30
