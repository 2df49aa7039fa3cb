"""`evaluate` and `certify` under `torchrun --nproc_per_node=2` (gloo, CPU) give one process's report."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from birdshield.cli import main
from birdshield.data import discover, samples_for_model
from birdshield.distributed import Dist
from birdshield.errors import OutDirError
from birdshield.evaluation import EvalConfig, evaluate_to_dir
from birdshield.evaluation.certify import certify_to_dir
from birdshield.evaluation.config import N_EXAMPLES
from birdshield.evaluation.sharding import chunk_offset, deal_chunks, interleave, merge_examples
from birdshield.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), ENV.get("PYTHONPATH")]))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def odd_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_data plus one unreadable test file early in the sorted list: 13 test files, 12 readable."""
    root = tmp_path_factory.mktemp("odd") / "data"
    shutil.copytree(tiny_data, root)
    first_class = sorted((root / "test").iterdir())[0]
    (first_class / "0b.jpg").write_bytes(b"not an image")
    return root


def _torchrun(argv: list[str]) -> str:
    cmd = [*TORCHRUN, "-m", "birdshield.cli", "--threads", "1", *argv]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)  # a hang fails
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _without_timings(report: dict[str, Any]) -> dict[str, Any]:
    drop = {"seconds", "seconds_per_image", "images_per_second"}
    if isinstance(report, dict):
        return {k: _without_timings(v) for k, v in report.items() if k not in drop}
    if isinstance(report, list):
        return [_without_timings(v) for v in report]
    return report


def test_evaluate_under_torchrun_matches_one_process(tiny_run: Path, odd_data: Path, tmp_path: Path) -> None:
    argv = ["evaluate", str(tiny_run), str(odd_data), "--attacks", "fgsm,pgd,square", "--eps", "2/255,8/255"]
    argv += ["--steps", "3", "--restarts", "2", "--square-queries", "20", "--batch-size", "2"]
    argv += ["--corruptions", "gaussian_noise", "--severities", "1", "--noise-std", "0.1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    printed = _torchrun([*argv, "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert one["n"] == 12 and len(one["bad_images"]) == 1  # 7 chunks of 2: rank 0 takes 4, rank 1 takes 3
    assert 0 < one["ensemble"][-1]["robust_accuracy"] < one["clean_accuracy"]  # the attacks bite
    assert _without_timings(two) == _without_timings(one)
    assert printed.count("report.md") == 1  # only rank 0 prints
    assert (tmp_path / "two" / "examples.png").is_file()
    assert not list((tmp_path / "two").glob("shard-*")) and not (tmp_path / "two" / "state.json").exists()


def test_certify_under_torchrun_matches_one_process(tiny_run: Path, odd_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"  # a copy without model.onnx: rank 0 exports it while rank 1 waits
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.onnx"))
    argv = ["certify", str(run), str(odd_data), "--sigma", "1", "--selection-samples", "8"]  # votes split
    argv += ["--samples", "40", "--alpha", "0.01", "--batch-size", "20", "--device", "cpu"]
    printed = _torchrun([*argv, "--out", str(tmp_path / "two")])
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / d / "certify.json").read_text()) for d in ("one", "two"))
    assert (one["n_images"], one["n_unreadable"]) == (12, 1)
    assert _without_timings(two) == _without_timings(one)
    assert printed.count("radius") == 1  # one table, from rank 0
    assert not list((tmp_path / "two").glob("shard-*"))


# ------------------------------------------------------------------------------------------- bookkeeping


def test_chunks_are_dealt_round_robin_and_placed_back() -> None:
    ranks = [Dist(r, 3) for r in range(3)]
    shards = [deal_chunks(11, 2, d) for d in ranks]
    assert shards == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]
    for d, shard in zip(ranks, shards, strict=True):
        assert [chunk_offset(2, d)(local) for local in range(0, len(shard), 2)] == shard[::2]
    assert interleave([[0, 3, 6], [1, 4], [2, 5]]) == list(range(7))


def test_merged_examples_are_those_one_process_picks() -> None:
    rng = random.Random(0)
    for _ in range(50):
        world, chunks = rng.randint(2, 4), [rng.randint(0, 3) for _ in range(rng.randint(1, 9))]
        # each chunk's candidates, best first; rank r measures chunks r, r + world, ...
        ranked = [[{"at": c, "i": i} for i in range(k)] for c, k in enumerate(chunks)]
        one = _greedy(ranked)
        per_rank = [_greedy(ranked[r::world]) for r in range(world)]
        assert merge_examples(per_rank) == one


def _greedy(ranked: list[list[dict]]) -> list[dict]:
    """What ``run._measure`` keeps: each chunk's best candidates, as many as there is room left."""
    out: list[dict] = []
    for candidates in ranked:
        out += candidates[: N_EXAMPLES - len(out)]
    return out


# ------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_resume_refuses_progress_saved_by_another_number_of_processes(
    command: str, tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Progress of 2 torchrun processes is not thrown away by a single-process --resume (and the reverse):
    the run stops and says how to resume it."""
    argv = [command, str(tiny_run), str(tiny_data), "--n-images", "3", "--device", "cpu", "--resume"]
    argv += ["--attacks", "fgsm", "--corruptions", "none"] if command == "evaluate" else ["--samples", "10"]
    out = tmp_path / "out"
    saved = out / "shard-1-of-2" / ("state.json" if command == "evaluate" else "certify.jsonl")
    saved.parent.mkdir(parents=True)
    saved.write_text("{}\n")  # what is in it is never read: another world size is refused first
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "saved by 2 process(es), this run has 1" in err and "torchrun --nproc_per_node=2" in err
    assert saved.read_text() == "{}\n"

    shutil.rmtree(saved.parent)  # the reverse: one process's progress, resumed by rank 0 of 2
    (out / saved.name).write_text("{}\n")
    model = load_checkpoint(tiny_run)
    samples = samples_for_model(discover(tiny_data), "test", model.class_names)[:3]
    with pytest.raises(OutDirError, match=r"saved by 1 process\(es\), this run has 2: resume it in a single"):
        if command == "evaluate":
            evaluate_to_dir(model, samples, EvalConfig(attacks=("fgsm",)), out, resume=True, shard=Dist(0, 2))
        else:
            certify_to_dir(model, samples, out, sigma=0.25, n=10, resume=True, shard=Dist(0, 2))
    assert (out / saved.name).read_text() == "{}\n"
