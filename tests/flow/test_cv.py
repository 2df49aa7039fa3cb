"""`train --cv K`: folds of the train and valid images (never the test split), every held-out image counted
once, robust never above clean, and a second run of the same command redoes nothing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import TINY
from PIL import Image

from birdshield import data
from birdshield.cli import main
from birdshield.errors import OutDirError
from birdshield.training.config import TrainConfig
from birdshield.training.cv import CV_FILE, _load, _recipe_key, fold_dataset, fold_of

pytestmark = pytest.mark.usefixtures("one_thread")


def test_folds_are_stratified_disjoint_and_leave_the_test_split_alone(tiny_data: Path) -> None:
    dataset = data.discover(tiny_data)
    pool = dataset.splits["train"] + dataset.splits["valid"]
    test = {s.path for s in dataset.splits["test"]}
    sizes = Counter(fold_of(pool, 4, seed=3))
    assert max(sizes.values()) - min(sizes.values()) <= 1  # equal folds
    held_out = []
    for fold in range(4):
        split = fold_dataset(dataset, 4, fold, seed=3)
        parts = [{s.path for s in split.splits[name]} for name in ("train", "valid", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == {s.path for s in pool}  # the whole pool, nothing else
        assert not set().union(*parts) & test  # the real test split is never used
        assert {s.label for s in split.splits["valid"]} == set(range(len(dataset.class_names)))
        held_out += split.splits["test"]
    assert sorted(s.path for s in held_out) == sorted(s.path for s in pool)  # each image held out once
    assert fold_of(pool, 4, seed=3) != fold_of(pool, 4, seed=4)  # the seed deals other folds


def test_cross_validation_counts_every_held_out_image_once_and_resumes(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cv"
    argv = ["train", str(tiny_data), "--out", str(out), *TINY, "--epochs", "1", "--probe-epochs", "3"]
    argv += ["--cv", "2", "--cv-eps", "8/255"]
    assert main(argv) == 0
    summary = json.loads((out / "cv.json").read_text())
    dataset = data.discover(tiny_data)
    assert summary["pooled"]["n"] == len(dataset.splits["train"]) + len(dataset.splits["valid"])
    assert summary["pooled"]["folds_done"] == [0, 1]
    for fold in summary["folds"].values():
        assert 0 <= fold["robust"][str(8 / 255)] <= fold["clean"] <= fold["n"]  # attacks only take away
    low, high = summary["pooled"]["clean"]["ci95"]
    assert low <= summary["pooled"]["clean"]["accuracy"] <= high
    assert "all 2 of 2" in (out / "cv.md").read_text() and "teacher clean" not in (out / "cv.md").read_text()
    assert Image.open(out / "cv.png").format == "PNG"
    photos = [im for fold in summary["folds"].values() for im in fold["images"]]  # each one's outcome
    assert len({im["image"] for im in photos}) == summary["pooled"]["n"]
    assert sum(im["robust"][str(8 / 255)] for im in photos) == summary["pooled"][str(8 / 255)]["correct"]
    capsys.readouterr()
    assert main(["compare", str(out), str(out), "--names", "cv,again", "--paired"]) == 0  # photo by photo
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"| again | {summary['pooled']['n']} | +0/-0")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert main(argv) == 0  # the same command again: nothing retrained, nothing re-measured
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps
    assert json.loads((out / "cv.json").read_text()) == summary
    elsewhere = [argv[0], f"{tiny_data.parent}/./{tiny_data.name}", *argv[2:]]
    assert main(elsewhere) == 0  # the same data spelled another way resumes too
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps
    assert main([*argv[:-2], "--cv-eps", "4/255"]) == 2  # another recipe into the same folder is refused


def test_the_automatic_teachers_clean_accuracy_is_measured_on_the_same_held_out_images(
    tiny_data: Path, tmp_path: Path
):
    out = tmp_path / "cv"
    argv = ["train", str(tiny_data), "--out", str(out), *TINY, "--epochs", "1", "--probe-epochs", "3"]
    argv += ["--teacher", "auto", "--cv", "2"]
    assert main(argv) == 0
    summary = json.loads((out / "cv.json").read_text())
    folds = summary["folds"].values()
    assert all(0 <= f["teacher_clean"] <= f["n"] for f in folds)
    assert summary["pooled"]["teacher_clean"]["correct"] == sum(f["teacher_clean"] for f in folds)
    assert "teacher clean" in (out / "cv.md").read_text()
    for fold in summary["folds"].values():  # as a summary written before teachers were measured
        del fold["teacher_clean"]
    (out / "cv.json").write_text(json.dumps(summary))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert main(argv) == 0  # measured again on resume, nothing retrained, the same counts
    again = json.loads((out / "cv.json").read_text())
    assert again["pooled"]["teacher_clean"] == summary["pooled"]["teacher_clean"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps


def test_a_cross_validation_saved_with_the_data_path_as_typed_resumes(tmp_path: Path) -> None:
    cfg = TrainConfig(data="../birds", out=str(tmp_path))  # the key older versions saved
    older = {"k": 5, "seed": 0, "eps": [], "folds": {"0": {"n": 1}}}
    older["recipe_key"] = _recipe_key(cfg, 5, (), data_as_typed=True)
    (tmp_path / CV_FILE).write_text(json.dumps(older))
    summary = _load(tmp_path, cfg, 5, ())
    assert summary["folds"] == older["folds"] and summary["recipe_key"] == _recipe_key(cfg, 5, ())
    with pytest.raises(OutDirError):
        _load(tmp_path, cfg, 4, ())
