"""The benchmark scripts still run end to end (tiny sizes; their timings mean nothing here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def test_pgd_benchmark_runs_both_sides(tiny_run: Path, tiny_data: Path):
    pytest.importorskip("torchattacks")
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_pgd.py"),
        str(tiny_run),
        "--data",
        str(tiny_data),
        "--n",
        "6",
        "--steps",
        "2",
        "--eps",
        "8/255",
        "--threads",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "time ratio theirs/ours" in out.stdout and "robust accuracies" in out.stdout


def test_train_benchmark_explains_itself():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "plain" in out.stdout


def test_predict_benchmark_runs_all_three_sides(tiny_data: Path):
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_predict.py"),
        "--data",
        str(tiny_data),
        "--limit",
        "6",
        "--threads",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("x\n") == 3 and "images/s" in out.stdout
    assert "top-1 agreement (c) vs (b): 6/6" in out.stdout


def test_certify_benchmark_runs_all_three_sides(tiny_run: Path, tiny_data: Path):
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_certify.py"),
        str(tiny_run),
        "--data",
        str(tiny_data),
        "--n-images",
        "2",
        "--selection-samples",
        "10",
        "--samples",
        "30",
        "--batch-size",
        "16",
        "--threads",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(re.findall(r"\d\.\d\dx ", out.stdout)) == 3  # a ratio per side
    assert "s/image" in out.stdout and "r=0.5" in out.stdout
    assert "same smoothed prediction (b) vs (c): 2/2" in out.stdout


def test_page_benchmark_times_every_action_through_http(tiny_run: Path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_page.py"), str(tiny_run), "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "page: http://127.0.0.1:" in out.stdout
    for action in ("predict", "fgsm", "pgd-10", "smoothing n=100"):
        assert any(line.startswith(action) for line in out.stdout.splitlines()), out.stdout


def test_pgd_benchmark_whole_process_runs_both_sides(tiny_run: Path, tiny_data: Path):
    pytest.importorskip("torchattacks")
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_pgd.py"), str(tiny_run), "--whole-process"]
    cmd += ["--data", str(tiny_data), "--n", "6", "--steps", "2", "--eps", "8/255", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "whole-process time ratio theirs/ours" in out.stdout and "robust accuracies" in out.stdout
    assert out.stdout.count("robust accuracy ") == 2


def test_evaluate_benchmark_runs_both_runtimes_and_compares_their_reports(tiny_run: Path, tiny_data: Path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_evaluate.py"), str(tiny_run), "--data"]
    cmd += [str(tiny_data), "--n-images", "6", "--repeats", "1", "--", "--eps", "2/255", "--steps", "2"]
    cmd += ["--square-queries", "10", "--corruptions", "gaussian_noise", "--severities", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "time ratio torch/onnx" in out.stdout and "same report numbers: yes" in out.stdout
