"""Training end to end through the CLI on tiny data: checkpoints, history, resume after SIGKILL, DDP."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_CLASSES, textured_image

import birdshield
import birdshield.models
import birdshield.training
from birdshield import data
from birdshield.cli import main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "birdshield.cli"]


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_training_config_imports_without_torch():
    """The CLI builds its parser from birdshield.training's configs; loading torch there costs seconds."""
    src = str(Path(birdshield.__file__).parents[1])
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [src, ENV.get("PYTHONPATH")]))}
    code = "import sys, birdshield.training.config, birdshield.training; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert birdshield.training.TrainConfig("d", "o").arch == birdshield.models.DEFAULT_ARCH


def _valid_split(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images and labels of `root`, decoded at `size`."""
    valid = data.discover(root).splits["valid"]
    x = torch.stack([data.to_tensor(data.read_rgb(s.path), size) for s in valid])
    return x, torch.tensor([s.label for s in valid])


def test_training_writes_a_loadable_best_checkpoint_and_curves(tiny_run: Path, tiny_data: Path):
    for name in ("model.safetensors", "birdshield.json", "history.csv", "curves.png", "resume.safetensors"):
        assert (tiny_run / name).is_file(), name
    rows = _history(tiny_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    model = birdshield.load(tiny_run)
    assert model.class_names == sorted(p.name for p in (tiny_data / "train").iterdir())
    best = max(float(r["valid_accuracy"]) for r in rows)
    assert model.meta["metrics"]["valid_accuracy"] == pytest.approx(best)
    # the checkpoint is the best epoch's model: its valid accuracy recomputed here matches the history
    x, y = _valid_split(tiny_data, model.image_size)
    with torch.inference_mode():
        assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(best)


def test_tiny_model_learns_the_tinted_classes(tiny_run: Path):
    rows = _history(tiny_run)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["valid_accuracy"]) for r in rows) >= 0.75  # chance is 1/3


def test_early_stopping_stops_after_patience(tiny_data: Path, tmp_path: Path):
    # lr 0 never improves on epoch 1, so patience 2 ends the run after epoch 3
    assert (
        main(
            [
                "train",
                str(tiny_data),
                "--out",
                str(tmp_path),
                *TINY,
                "--epochs",
                "10",
                "--patience",
                "2",
                "--lr",
                "0",
                "--backbone-lr",
                "0",
                "--probe-epochs",
                "0",
            ]
        )
        == 0
    )
    assert len(_history(tmp_path)) == 3


def test_tta_flip_is_saved_with_the_model_while_training_validates_the_single_view(
    tiny_data: Path, tmp_path: Path
):
    argv = ["train", str(tiny_data), "--out", str(tmp_path), *TINY, "--epochs", "1", "--tta-flip"]
    assert main([*argv, "--probe-epochs", "0", "--depth", "full"]) == 0
    model = birdshield.load(tmp_path)
    assert model.tta_flip and model.meta["training"]["tta_flip"]
    x, y = _valid_split(tiny_data, model.image_size)
    model.meta["tta_flip"] = False
    with torch.inference_mode():
        single = (model(x).argmax(1) == y).float().mean().item()
    assert model.meta["metrics"]["valid_accuracy"] == pytest.approx(single)
    report = tmp_path / "report"
    evaluate = ["evaluate", str(tmp_path), str(tiny_data), "--attacks", "fgsm", "--eps", "2/255"]
    assert main([*evaluate, "--corruptions", "none", "--noise-std", "none", "--out", str(report)]) == 0
    assert json.loads((report / "report.json").read_text())["model"]["tta_flip"]
    assert "mirror image (--tta-flip), attacked through it" in (report / "report.md").read_text()


def test_run_killed_mid_epoch_resumes(tiny_data: Path, tmp_path: Path):
    """SIGKILL early in epoch 3 (epoch 2 is printed after its files are written).

    --resume continues from the last finished epoch and ends exactly like an uninterrupted run, weight
    average (which is what is validated) included.
    """
    cmd = [
        *CLI,
        "train",
        str(tiny_data),
        "--out",
        str(tmp_path),
        *TINY,
        "--epochs",
        "5",
        "--probe-epochs",
        "0",
        "--batch-size",
        "1",
        "--depth",
        "full",
        "--ema-decay",
        "0.9",
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    for line in proc.stdout:
        seen += line
        if line.startswith("epoch 2/5"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen
    assert len(_history(tmp_path)) == 2
    birdshield.load(tmp_path)  # the best checkpoint survived the kill intact
    out = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed" in out.stdout and "after epoch 2" in out.stdout
    resumed = _history(tmp_path)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3, 4, 5]
    birdshield.load(tmp_path)
    # per-epoch seeding: the resumed run matches one that was never interrupted
    straight = tmp_path / "straight"
    cmd[cmd.index(str(tmp_path))] = str(straight)
    assert subprocess.run(cmd, env=ENV, capture_output=True, timeout=300).returncode == 0
    for column in ("train_loss", "valid_loss"):
        assert [r[column] for r in _history(straight)] == [r[column] for r in resumed]


@pytest.fixture
def odd_data_with_bad_files(tmp_path: Path) -> Path:
    """9 good and 4 unreadable training images: 13, odd, so the two ranks' shares differ without padding,
    and at batch size 1 every unreadable file is a batch with no image at all."""
    root = tmp_path / "data"
    for tint, name in enumerate(TINY_CLASSES):
        for split, n in {"train": 3, "valid": 2}.items():
            for i in range(n):
                path = root / split / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                textured_image(100 * tint + 10 * (split == "valid") + i, tint=tint).save(path)
    for i in range(4):
        (root / "train" / TINY_CLASSES[i % 3] / f"bad{i}.jpg").write_bytes(b"not an image")
    return root


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants, children first (torchrun starts each worker in its own session,
    so killing its process group would leave deadlocked workers holding the output pipes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        _kill_tree(int(child))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _run_or_fail(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd`; past `timeout` kill it with all its processes and fail (a deadlock must not hang pytest)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running after {timeout} s (deadlocked?): {stdout[-2000:]} {stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_torchrun_two_cpu_processes_train_with_ddp(odd_data_with_bad_files: Path, tmp_path: Path):
    """DDP over gloo with an odd number of training images and batches of unreadable images only: every
    rank takes part in every collective, so the run ends (a rank that skipped a step would deadlock)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "birdshield.cli", "train", str(odd_data_with_bad_files), "--out", str(tmp_path / "run")]
    cmd += [*TINY, "--epochs", "2", "--probe-epochs", "0", "--depth", "full", "--batch-size", "1"]
    out = _run_or_fail([*cmd, "--device", "cpu"], timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "x2" in out.stdout  # both ranks joined one process group
    assert "13 train" in out.stdout and "bad3.jpg" in out.stderr  # the unreadable files were in the split
    assert out.stdout.count("epoch 1/2") == 1  # only rank 0 reports and writes
    assert len(_history(tmp_path / "run")) == 2
    birdshield.load(tmp_path / "run")


def test_empty_class_folder_is_a_clear_error(tiny_data: Path, tmp_path: Path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "train" / "EMPTY BIRD").mkdir()
    assert main(["train", str(root), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "EMPTY BIRD" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_resume_with_another_model_is_a_clear_error(tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = ["train", str(tiny_data), "--out", str(run), *TINY, "--arch", "resnet10t", "--probe-epochs", "0"]
    assert main([*args, "--resume"]) == 2  # the last --arch wins
    assert "cannot resume" in capsys.readouterr().err


def test_resume_with_other_options_or_other_images_is_refused(
    tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys
):
    """Same model, so the checkpoint would load: the fingerprint is what tells the runs apart."""
    import shutil

    run, changed = tmp_path / "run", tmp_path / "data"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_data, changed)
    same = ["--out", str(run), *TINY, "--epochs", "6", "--batch-size", "8", "--depth", "full", "--lr", "0.01",
            "--backbone-lr", "0.01", "--probe-epochs", "0", "--resume"]  # fmt: skip
    photo = next((changed / "train").rglob("*.jpg"))
    textured_image(999).save(photo)  # other pixels under the same name

    assert main(["train", str(tiny_data), *same, "--lr", "0.02"]) == 2
    assert main(["train", str(changed), *same]) == 2
    errors = capsys.readouterr().err
    assert errors.count("other options or other images") == 2
    assert main(["train", str(tiny_data), *same]) == 0  # the run's own options and images still resume


def test_fast_cpu_path_trains_the_cached_probe_and_a_rerun_reuses_its_features(
    tiny_data: Path, tmp_path: Path, capsys
):
    cache = tmp_path / "cache"
    args = ["train", str(tiny_data), *TINY, "--fast-cpu", "on", "--probe-epochs", "20", "--feature-cache"]
    assert main([*args, str(cache), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "fast CPU path (--fast-cpu on)" in out and "train features" not in out  # quiet off a terminal
    meta = birdshield.models.read_metadata(tmp_path / "a")
    assert meta["training"]["depth"] == "probe" and meta["training"]["augment"]["hflip"] is False
    assert meta["metrics"]["valid_accuracy"] > 1 / 3  # the probe learnt the tints
    assert len(list(cache.iterdir())) == 2  # one cache per split
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.f16")}
    assert main([*args, str(cache), "--out", str(tmp_path / "b")]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.f16")} == stamp  # read back, not rewritten
    a, b = (birdshield.models.load_checkpoint(tmp_path / name) for name in "ab")
    x = torch.rand(2, 3, 48, 48)
    torch.testing.assert_close(a(x), b(x))  # same features, same seed: the same head


def test_training_seed_does_not_move_the_test_split_of_a_folder_tree(tmp_path: Path, make_image) -> None:
    """A folder tree is split here; evaluate reads its test split with the default split seed, so a model
    trained with another --seed must have trained on that split's complement, or test photos leak."""
    from birdshield.training.config import TrainConfig
    from birdshield.training.loop import _discover

    for c in range(3):
        for i in range(20):
            make_image(tmp_path / "birds" / f"species {c}" / f"{i}.jpg", seed=100 * c + i, tint=c)
    evaluated = {s.path for s in data.discover(tmp_path / "birds").splits["test"]}
    for seed in (0, 3):
        trained = _discover(TrainConfig(str(tmp_path / "birds"), "out", seed=seed)).splits
        assert not evaluated & {s.path for s in trained["train"] + trained["valid"]}, seed


def test_training_on_the_cache_equals_training_that_decodes(tiny_data: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BIRDSHIELD_CACHE", str(tmp_path / "cache"))
    args = [*TINY, "--epochs", "1", "--depth", "full", "--probe-epochs", "0", "--batch-size", "8"]
    for mode in ("on", "off"):
        assert (
            main(["train", str(tiny_data), "--out", str(tmp_path / mode), *args, "--decode-cache", mode]) == 0
        )
    assert (tmp_path / "cache" / "decoded").is_dir()
    on, off = (birdshield.load(tmp_path / mode, device="cpu") for mode in ("on", "off"))
    for (name, a), b in zip(on.state_dict().items(), off.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
