"""Defences through the commands: `certify` lists every image and resumes after a kill with the numbers of
an uninterrupted run, `predict --defense` and `evaluate --defense` transform (and attack through) every
image, and a bad defence parameter is a one-line error."""

from __future__ import annotations

import csv
import io
import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from helpers import TINY_CLASSES, kill_cli_when

import birdshield
from birdshield.cli import main
from birdshield.reporting.compare import compare_table, load_reports
from birdshield.reporting.markdown import pct_ci


def test_certify_cli_lists_every_image(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    args = [
        "--sigma",
        "0.12",
        "--selection-samples",
        "8",
        "--samples",
        "40",
        "--alpha",
        "0.01",
        "--n-images",
        "6",
    ]
    assert main(["certify", str(tiny_run), str(tiny_data), *args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "certify.json").read_text())
    assert (result["sigma"], result["n0"], result["n"], len(result["images"])) == (0.12, 8, 40, 6)
    assert Counter(im["label"] for im in result["images"]) == dict.fromkeys(TINY_CLASSES, 2)
    for im in result["images"]:
        assert im["prediction"] in [*TINY_CLASSES, None]
        assert im["correct"] == (im["prediction"] == im["label"])
        assert (im["radius"] is None) == (im["prediction"] is None)
    acc = [row["accuracy"] for row in result["certified_accuracy"]]
    assert acc[0] == sum(im["correct"] for im in result["images"]) / 6
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
    assert (tmp_path / "certify.md").is_file() and (tmp_path / "certified_accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("defense,param", [("smoothing", "0.12"), ("jpeg", "60"), ("median", "3")])
def test_predict_cli_with_defense(tiny_run: Path, tiny_data: Path, tmp_path: Path, defense, param) -> None:
    out = tmp_path / "p.csv"
    opts = ["--defense", defense, "--defense-param", param, "--samples", "30", "--top-k", "2"]
    assert main(["predict", str(tiny_run), str(tiny_data / "test"), "--out", str(out), *opts]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 12 and list(rows[0]) == [
        "image",
        "species",
        "confidence",
        "species_2",
        "confidence_2",
        "error",
    ]
    assert all(r["species"] in [*TINY_CLASSES, "ABSTAIN"] and not r["error"] for r in rows)
    assert all((r["species"] == "ABSTAIN") == (r["confidence"] == "") for r in rows)
    # The defence must have run: skipped, the (deterministic) predictions would equal the undefended ones.
    plain = tmp_path / "plain.csv"
    assert main(["predict", str(tiny_run), str(tiny_data / "test"), "--out", str(plain), "--top-k", "2"]) == 0
    undefended = {r["image"]: r for r in csv.DictReader(io.StringIO(plain.read_text()))}
    changed = [r["image"] for r in rows if r["confidence"] != undefended[r["image"]]["confidence"]]
    assert changed  # (this confident tiny model saturates at 1.0000 on most images, not all)


def test_bad_defense_parameter_is_a_clean_error(tiny_run: Path, tiny_data: Path, capsys) -> None:
    args = ["predict", str(tiny_run), str(tiny_data / "test"), "--out", "-", "--defense", "jpeg"]
    assert main([*args, "--defense-param", "0"]) == 2
    assert "quality" in capsys.readouterr().err


def test_evaluate_cli_attacks_through_the_defense(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """A median filter of size 1 is the identity, so its report equals the undefended one; a real
    transform is recorded and attacked through (BPDA: gradients are not zero, robust <= clean)."""
    argv = ["evaluate", str(tiny_run), str(tiny_data), "--attacks", "fgsm,pgd", "--eps", "2/255,8/255"]
    argv += ["--steps", "3", "--corruptions", "none", "--noise-std", "0.1"]

    def report(name: str, *defense: str) -> dict:
        assert main([*argv, "--out", str(tmp_path / name), *defense]) == 0
        return json.loads((tmp_path / name / "report.json").read_text())

    def numbers(r: dict) -> list:
        return [r["clean_accuracy"], r["ensemble"], r["corruptions"], r["flags"]]

    plain, identity = report("plain"), report("identity", "--defense", "median", "--defense-param", "1")
    assert numbers(identity) == numbers(plain) and plain["model"]["defense"] is None
    assert identity["model"]["defense"] == "MedianFilter(kernel=1, bpda=True)"
    squeezed = report("bits", "--defense", "bits", "--defense-param", "3")
    assert squeezed["model"]["defense"] == "BitDepth(bits=3, bpda=True)"
    assert "BitDepth(bits=3" in (tmp_path / "bits" / "report.md").read_text()
    assert not [f for f in squeezed["flags"] if "gradient" in f["flag"]]
    robust = [e["robust_accuracy"] for e in squeezed["ensemble"]]
    assert squeezed["clean_accuracy"] >= robust[0] >= robust[1]
    with pytest.raises(SystemExit):  # smoothing is certify's job
        main([*argv, "--out", str(tmp_path / "x"), "--defense", "smoothing"])


def _certified_numbers(result: dict) -> dict:
    result = {k: v for k, v in result.items() if k not in ("seconds_per_image", "images_per_second")}
    result["images"] = [{k: v for k, v in im.items() if k != "seconds"} for im in result["images"]]
    return result


def test_certify_runtimes_draw_the_same_noise(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    argv = ["certify", str(tiny_run), str(tiny_data), "--sigma", "0.12", "--selection-samples", "8"]
    argv += ["--samples", "40", "--alpha", "0.01", "--n-images", "3"]
    results = {}
    for runtime in ("torch", "onnx"):
        assert main([*argv, "--runtime", runtime, "--out", str(tmp_path / runtime)]) == 0
        results[runtime] = json.loads((tmp_path / runtime / "certify.json").read_text())
        assert results[runtime]["runtime"] == runtime
    torch_images, onnx_images = results["torch"]["images"], results["onnx"]["images"]
    assert [im["prediction"] for im in torch_images] == [im["prediction"] for im in onnx_images]
    for a, b in zip(torch_images, onnx_images, strict=True):  # float rounding may move a vote, no more
        assert a["radius"] == b["radius"] or abs(a["radius"] - b["radius"]) < 0.05
    # a log written by one runtime is not continued by the other (their votes may differ)
    from birdshield.evaluation.state import model_fingerprint

    torch_model, onnx_model = (birdshield.load(tiny_run, runtime=r, device="cpu") for r in ("torch", "onnx"))
    assert model_fingerprint(torch_model) != model_fingerprint(onnx_model)
    assert model_fingerprint(onnx_model) == model_fingerprint(birdshield.load(tiny_run, runtime="onnx"))


def test_certify_with_min_radius_reports_and_compares_from_that_radius_on(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """A --min-radius run has no curve below its radius: its report and `compare` say so, and do not fail."""
    out = tmp_path / "early"
    argv = ["certify", str(tiny_run), str(tiny_data), "--sigma", "0.12", "--selection-samples", "8"]
    argv += ["--samples", "40", "--alpha", "0.01", "--n-images", "3", "--min-radius", "0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "certify.json").read_text())
    assert min(row["radius"] for row in result["certified_accuracy"]) == 0.25
    rows = {line.split(" | ")[0]: line for line in (out / "certify.md").read_text().splitlines()}
    assert "not measured" in rows["| 0.000"] and "not measured" not in rows["| 0.250"]
    assert (out / "certified_accuracy.png").stat().st_size > 0
    first = result["certified_accuracy"][0]
    [row] = compare_table([load_reports(out)], radii=(0.0, 0.25))[2:]
    assert row.endswith(f"| – | {pct_ci(first['accuracy'], result['n_images'], first['ci95'])} |")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_certify_cli_resumes_after_signal(tiny_run: Path, tiny_data: Path, tmp_path: Path, sig: int) -> None:
    """Killed, or stopped by Ctrl-C, after its first image: --resume ends with the uninterrupted numbers."""
    argv = [
        "certify",
        str(tiny_run),
        str(tiny_data),
        "--sigma",
        "0.12",
        "--selection-samples",
        "8",
        "--samples",
        "100",
    ]
    argv += ["--batch-size", "20", "--n-images", "6"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "b"
    log = out / "certify.jsonl"

    def one_done() -> bool:  # the fingerprint line and one image
        return log.is_file() and log.read_text().count("\n") >= 2

    kill_cli_when([*argv, "--out", str(out)], ready=one_done, sig=sig)
    assert not (out / "certify.json").exists() and log.read_text().count("\n") < 7
    assert main([*argv, "--out", str(out), "--resume", "--seed", "1"]) == 2  # other noise: refused
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    whole, resumed = (json.loads((tmp_path / d / "certify.json").read_text()) for d in "ab")
    assert _certified_numbers(resumed)["run"] == str(tiny_run)
    assert _certified_numbers(resumed) == _certified_numbers(whole)
    assert not log.exists() and (out / "certified_accuracy.png").is_file()
