"""Robust training through `birdshield train`: what a run was trained against is recorded, robust selection
keeps the most robust epoch, presets set defaults that explicit options override, and distillation (a given
teacher, or one trained first by `--teacher auto`, resumed not retrained) refuses a teacher of other
species."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from helpers import TINY, run_meta

from birdshield.cli import main

FAST = [*TINY, "--probe-epochs", "0", "--depth", "full", "--batch-size", "12"]


@pytest.mark.parametrize("method", ["pgd", "fgsm", "trades"])
def test_adversarial_training_is_recorded_and_selects_on_robust_accuracy(
    method, tiny_data: Path, tmp_path: Path
):
    args = [
        "train",
        str(tiny_data),
        "--out",
        str(tmp_path),
        *FAST,
        "--epochs",
        "2",
        "--adv",
        method,
        "--adv-eps",
        "8/255",
        "--adv-steps",
        "2",
        "--select",
        "robust",
    ]
    assert main(args) == 0
    meta = run_meta(tmp_path)
    assert meta["trained_against"]["adversarial"]["method"] == method
    assert meta["trained_against"]["adversarial"]["eps"] == pytest.approx(8 / 255)
    history = list(csv.DictReader((tmp_path / "history.csv").open(newline="")))
    assert ("train_pgd_accuracy" in history[0]) == (method == "fgsm")
    for row in history:  # every accuracy of the history carries its 95% interval
        for key in [k for k in row if k.endswith("accuracy")]:
            low, accuracy, high = (float(row[key + end]) for end in ("_ci95_low", "", "_ci95_high"))
            assert 0 <= low <= accuracy <= high <= 1
    robust = [float(row["valid_robust_accuracy"]) for row in history]
    best = robust.index(max(robust))  # the first epoch reaching the best robust accuracy is kept
    assert meta["metrics"]["epoch"] == int(history[best]["epoch"])
    assert meta["metrics"]["valid_robust_accuracy"] == pytest.approx(robust[best], rel=1e-5)


@pytest.mark.parametrize(
    ("augmentation", "warm_started"),
    [(["--rotate", "10"], False), (["--rotate", "10", "--adv", "pgd", "--adv-eps", "4/255"], True)],
)
def test_adversarial_training_starts_from_the_probed_head_whatever_the_augmentation(
    augmentation, warm_started, tiny_data: Path, tmp_path: Path, capsys
):
    """The probe sees plain images only, so geometric augmentation skips it, except under adversarial
    training, which from a random head learns next to nothing for epochs."""
    args = ["train", str(tiny_data), "--out", str(tmp_path), *TINY, "--depth", "full", "--epochs", "1"]
    args += ["--probe-epochs", "5", "--feature-cache", "none", "--batch-size", "12", *augmentation]
    assert main(args) == 0
    assert ("linear probe on cached features" in capsys.readouterr().out) == warm_started


def test_preset_sets_defaults_and_explicit_options_win(tiny_data: Path, tiny_run: Path, tmp_path: Path):
    args = ["train", str(tiny_data), "--out", str(tmp_path), *FAST, "--preset", "robust-cpu", "--epochs", "1"]
    assert main([*args, "--adv-steps", "1", "--teacher", str(tiny_run)]) == 0
    training = run_meta(tmp_path)["training"]
    assert training["adv"]["method"] == "pgd" and training["adv"]["select"] == "robust"
    assert training["ema_decay"] == 0.99  # the preset's
    assert training["epochs"] == 1 and training["adv"]["steps"] == 1 and training["teacher"] == str(tiny_run)


def test_distillation_trains_from_a_teacher_of_the_same_species_and_refuses_others(
    tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys
):
    args = ["train", str(tiny_data), "--out", str(tmp_path / "student"), *FAST, "--epochs", "1"]
    assert main([*args, "--teacher", str(tiny_run), "--adv", "pgd", "--adv-eps", "4/255"]) == 0
    assert run_meta(tmp_path / "student")["training"]["teacher"] == str(tiny_run)
    assert f"teacher {tiny_run}: " in capsys.readouterr().out
    stranger = tmp_path / "stranger"  # the same tree with one species fewer
    for split in ("train", "valid", "test"):
        for species in sorted((tiny_data / split).iterdir())[:2]:
            shutil.copytree(species, stranger / split / species.name)
    other = ["train", str(stranger), "--out", str(tmp_path / "other"), *FAST, "--teacher", str(tiny_run)]
    assert main(other) == 2
    assert "trained on other species" in capsys.readouterr().err


def test_an_automatic_teacher_is_trained_first_then_reused_on_resume(tiny_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "student"
    args = ["train", str(tiny_data), "--out", str(out), *FAST, "--epochs", "1", "--teacher", "auto"]
    assert main(args) == 0
    teacher = run_meta(out / "teacher")
    assert teacher["training"]["augment"]["noise_max"] == 0.2 and teacher["arch"] == "test_efficientnet"
    assert run_meta(out)["training"]["teacher"] == str(out / "teacher")
    assert "epoch 6/6" in capsys.readouterr().out  # the teacher's own training
    assert main([*args, "--resume"]) == 0  # the finished teacher is resumed, not trained again
    again = capsys.readouterr().out
    assert "epoch 1/6" not in again and f"teacher {out / 'teacher'}: " in again
