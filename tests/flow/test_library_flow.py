"""The library end to end, as a notebook would call it: configs in, no argparse, no CLI.

train (a config) -> load -> predict -> evaluate into a report folder -> certify -> attack files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import birdshield
from birdshield import data
from birdshield.attack_io import attack_files
from birdshield.defenses import make_defense
from birdshield.evaluation import PRESETS, certify_to_dir, evaluate_to_dir
from birdshield.inference import predict_files, predict_tensor
from birdshield.training import TrainConfig, config_from_options, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"arch": "test_efficientnet", "weights": None, "image_size": 48, "workers": 0, "batch_size": 8}


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow_run")
    cfg = config_from_options(
        str(tiny_data), str(out), **TINY, epochs=3, depth="full", lr=0.01, backbone_lr=0.01, probe_epochs=0
    )
    summary = train(cfg)
    assert summary["run_dir"] == str(out) and 1 <= summary["best_epoch"] <= 3
    return out


def test_a_preset_is_a_config_override(tiny_data: Path):
    cfg = TrainConfig.from_preset("robust-cpu", str(tiny_data), "out", epochs=2)
    assert cfg.adv.method == "pgd" and cfg.adv.select == "robust" and cfg.epochs == 2  # explicit wins


def test_the_loaded_model_predicts_as_the_trained_one(run: Path, tiny_data: Path):
    model = birdshield.load(run, device="cpu")
    test = data.discover(tiny_data).splits["test"]
    rows = predict_files(model, [s.path for s in test], top_k=2)
    x = torch.stack([data.to_tensor(data.read_rgb(s.path), model.image_size) for s in test])
    fresh = predict_tensor(birdshield.load(run), x, top_k=2)  # NCHW, no channels_last: equal up to rounding
    for row, top in zip(rows, fresh, strict=True):
        assert [name for name, _ in row["top"]] == [name for name, _ in top]
        assert [p for _, p in row["top"]] == pytest.approx([p for _, p in top], abs=1e-5)
    assert all(r["error"] == "" and len(r["top"]) == 2 for r in rows)
    accuracy = sum(r["top"][0][0] == model.class_names[s.label] for r, s in zip(rows, test, strict=True))
    assert accuracy / len(test) > 1 / len(model.class_names)  # learnt something: above chance


def test_a_defence_changes_what_the_model_sees(run: Path, tiny_data: Path):
    model = birdshield.load(run, device="cpu")
    x = torch.stack(
        [data.to_tensor(data.read_rgb(s.path), 48) for s in data.discover(tiny_data).splits["test"]]
    )
    plain = model(x)
    squeezed = model(make_defense("bits", 1)(x))
    assert not torch.allclose(plain, squeezed)  # a 1-bit image is a different input
    # Smoothing with noise too faint to change an answer votes unanimously for the model's own prediction
    votes = predict_tensor(model, x[:2], top_k=1, defense=make_defense("smoothing", 1e-4, n=20))
    assert votes == [[(model.class_names[int(c)], 1.0)] for c in plain[:2].argmax(1)]


def test_evaluate_and_certify_into_report_folders(run: Path, tiny_data: Path, tmp_path: Path):
    model = birdshield.load(run, device="cpu")
    samples = data.samples_for_model(data.discover(tiny_data), "test", model.class_names)
    cfg = dataclasses.replace(
        PRESETS["quick"], attacks=("fgsm", "pgd"), eps=(0.0, 8 / 255), corruptions=(), noise_std=(0.1,)
    )
    report = evaluate_to_dir(model, samples, cfg, tmp_path / "eval", run_dir=run, split="test")
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["clean_accuracy"] == report["clean_accuracy"]
    at = {e["eps"]: e["robust_accuracy"] for e in report["ensemble"]}
    assert at[0.0] == report["clean_accuracy"] >= at[8 / 255]  # eps=0 is the identity; attacks only hurt
    stated = [(report["clean_accuracy"], report["clean_ci95"])]
    stated += [(e["robust_accuracy"], e["ci95"]) for e in report["ensemble"] + report["results"]]
    stated += [(c["accuracy"], c["ci95"]) for c in report["corruptions"]]
    assert all(low <= acc <= high for acc, (low, high) in stated)  # every accuracy carries its interval
    n, classes = report["n"], report["per_class"]
    assert report["top5_accuracy"] >= report["clean_accuracy"]
    assert sum(c["n"] for c in classes) == n and [c["accuracy"] for c in classes] == sorted(
        c["accuracy"] for c in classes
    )
    assert sum(c["accuracy"] * c["n"] for c in classes) == pytest.approx(report["clean_accuracy"] * n)
    assert sum(p["count"] for p in report["confused_pairs"]) == round((1 - report["clean_accuracy"]) * n)
    assert "worst first" in (tmp_path / "eval" / "report.md").read_text()
    result = certify_to_dir(model, samples[:3], tmp_path / "cert", sigma=0.1, n0=10, n=30, batch_size=30)
    assert len(result["images"]) == 3 and (tmp_path / "cert" / "certify.json").is_file()
    assert all(im["radius"] is None or im["radius"] >= 0 for im in result["images"])
    assert all(
        r["n"] == 3 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in result["certified_accuracy"]
    )


@pytest.mark.parametrize(
    ("attack", "norm", "eps"), [("pgd", "linf", 4 / 255), ("pgd", "l2", 0.3), ("cw", "l2", 0.3)]
)
def test_every_written_png_is_inside_the_ball(
    run: Path, tiny_data: Path, tmp_path: Path, attack: str, norm: str, eps: float
):
    """What `attack` writes is what is judged: the 8-bit PNG read back, not the float image, must lie
    within eps of the photo as the model saw it (rounding to 8 bits can lengthen an L2 change)."""
    model = birdshield.load(run, device="cpu")
    folder = tiny_data / "test"
    rows = attack_files(model, [folder], tmp_path / "adv", attack=attack, eps=eps, norm=norm, steps=20)
    assert rows and all(r["error"] == "" for r in rows)
    sizes = []
    for r in rows:
        x = data.load_tensor(r["image"], model.image_size)
        x_png = data.to_tensor(data.read_rgb(r["output"]), model.image_size)  # the PNG as written
        delta = (x_png - x).flatten()
        size = float(delta.abs().max()) if norm == "linf" else float(delta.norm())
        assert size <= eps + 1e-6, (r["output"], size)
        assert float(r["linf"] if norm == "linf" else r["l2"]) == pytest.approx(size, abs=1e-4)
        sizes.append(size)
    assert max(sizes) > eps / 2  # the attacks used their budget: the check above checks something
