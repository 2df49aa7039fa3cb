"""The real Kaggle BIRDS-525 photos (a slice of ../shared/data/kaggle-504): default training and a quick
evaluation end to end, with the offline ImageNet backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import SHARED

from birdshield.cli import main

KAGGLE_504 = SHARED / "data" / "kaggle-504"
SPECIES = 12

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not KAGGLE_504.is_dir(), reason=f"real photos not found at {KAGGLE_504}"),
]


@pytest.fixture(scope="module")
def kaggle_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SPECIES species of every split (3 train / 1 valid / 1 test photos each), copied to tmp."""
    root = tmp_path_factory.mktemp("kaggle504")
    species = sorted(p.name for p in (KAGGLE_504 / "train").iterdir())[:SPECIES]
    for split in ("train", "valid", "test"):
        for name in species:
            shutil.copytree(KAGGLE_504 / split / name, root / split / name)
    return root


def test_default_training_and_quick_evaluation_on_kaggle_photos(kaggle_slice: Path, tmp_path: Path) -> None:
    run, report = tmp_path / "run", tmp_path / "report"
    assert main(["--threads", "2", "train", str(kaggle_slice), "--out", str(run), "--epochs", "1"]) == 0
    meta = json.loads((run / "birdshield.json").read_text())
    assert len(meta["class_names"]) == SPECIES
    assert meta["metrics"]["valid_accuracy"] >= 0.5  # ImageNet features tell 12 species apart (chance 8%)
    args = ["evaluate", str(run), str(kaggle_slice), "--quick", "--n-images", "8", "--out", str(report)]
    assert main(["--threads", "2", *args]) == 0
    result = json.loads((report / "report.json").read_text())
    assert result["n"] == 8 and 0 <= result["clean_accuracy"] <= result["top5_accuracy"] <= 1
    assert sum(row["n"] for row in result["per_class"]) == 8  # one row per species among the 8 photos
    assert all(row["robust_accuracy"] <= result["clean_accuracy"] for row in result["ensemble"])
