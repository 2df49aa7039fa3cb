"""Tests of the robustness evaluation (cascade bookkeeping, sanity flags, report files) and its CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import kill_cli_when
from PIL import Image
from torch import Tensor, nn

from birdshield import data
from birdshield.attacks import AttackResult
from birdshield.attacks.registry import get_spec
from birdshield.cli import main
from birdshield.data import samples_for_model
from birdshield.errors import OutDirError
from birdshield.evaluation import (
    EvalConfig,
    attack_plan,
    evaluate,
    evaluate_samples,
    evaluate_to_dir,
)
from birdshield.evaluation.cascade import Tally
from birdshield.evaluation.checks import final_flags
from birdshield.models import load_checkpoint as load
from birdshield.reporting.writers import write_evaluate_report
from birdshield.stats import ci95

EPS = (0.0, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255)
FAST = EvalConfig(
    attacks=("fgsm", "pgd", "apgd-ce", "square"),
    eps=EPS,
    steps={"pgd": 5, "apgd-ce": 5},
    square_queries=50,
    corruptions=("gaussian_noise", "jpeg"),
    severities=(1,),
    noise_std=(0.1,),
    batch_size=16,
)
REPORT_KEYS = {"model", "split", "n", "clean_accuracy", "corruptions", "results", "ensemble", "flags"}
REPORT_KEYS |= {"config", "seconds", "trained_against", "skipped", "bad_images"}
REPORT_KEYS |= {"clean_ci95", "top5_accuracy", "top5_ci95", "per_class", "confused_pairs"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    """A nearly linear 5-class net with large weights: its robust accuracy falls gradually over EPS."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, 5))
    with torch.no_grad():
        net[3].weight.mul_(20)
    return net.eval()


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    net = _net()
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:8] = (y[:8] + 1) % 5  # 8 clean mistakes
    return net, x, y


def _batches(x: Tensor, y: Tensor, size: int = 16) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _run(
    model: nn.Module, x: Tensor, y: Tensor, forward_model: nn.Module | None = None, **changes: object
) -> dict:
    import dataclasses

    cfg = dataclasses.replace(FAST, **changes)
    return evaluate(model, _batches(x, y), cfg, forward_model=forward_model)


@pytest.fixture(scope="module")
def cascade(setup: tuple[nn.Module, Tensor, Tensor]) -> dict:
    return _run(*setup)


@pytest.fixture(scope="module")
def independent(setup: tuple[nn.Module, Tensor, Tensor]) -> dict:
    return _run(*setup, independent=True)


def _by_eps(report: dict, eps: float) -> list[dict]:
    return [r for r in report["results"] if r["eps"] == eps]


def test_eps_zero_is_clean_accuracy(cascade: dict, independent: dict) -> None:
    for report in (cascade, independent):
        assert report["clean_accuracy"] == 56 / 64
        assert report["ensemble"][0] == {
            "norm": "linf",
            "eps": 0.0,
            "robust_accuracy": 56 / 64,
            "n": 64,
            "ci95": ci95(56, 64),
        }
        assert all(r["fooled"] == 0 for r in _by_eps(report, 0.0))
        assert report["flags"] == []


def test_robust_accuracy_does_not_rise_with_eps(cascade: dict, independent: dict) -> None:
    for report in (cascade, independent):
        acc = [e["robust_accuracy"] for e in report["ensemble"]]
        assert acc == sorted(acc, reverse=True)
        assert acc[-1] < acc[0]  # the attacks do bite


def test_ensemble_is_below_every_attack_and_clean(independent: dict) -> None:
    for ens in independent["ensemble"]:
        single = [r["robust_accuracy"] for r in _by_eps(independent, ens["eps"])]
        assert ens["robust_accuracy"] <= min(single) <= max(single) <= independent["clean_accuracy"]
        assert all(r["n_attacked"] == 56 for r in _by_eps(independent, ens["eps"]))


def test_cascade_passes_only_survivors_on(cascade: dict) -> None:
    for ens in cascade["ensemble"]:
        rows = _by_eps(cascade, ens["eps"])
        assert rows[0]["n_attacked"] == 56
        for prev, nxt in zip(rows, rows[1:], strict=False):
            assert nxt["n_attacked"] == prev["n_attacked"] - prev["fooled"]
            assert nxt["robust_accuracy"] == nxt["n_attacked"] / 64 - nxt["fooled"] / 64
        assert rows[-1]["robust_accuracy"] == ens["robust_accuracy"]


def test_black_box_attacks_run_last_and_skips_are_reported() -> None:
    cfg = EvalConfig(attacks=("square", "fgsm", "cw", "apgd-t", "pgd"))
    plan, skipped = attack_plan(cfg, num_classes=3)
    assert plan == ["fgsm", "pgd", "square"]
    assert {s["attack"] for s in skipped} == {"cw", "apgd-t"}
    with pytest.raises(ValueError, match="unknown attack"):
        attack_plan(EvalConfig(attacks=("nope",)), 3)


def test_l2_evaluation(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    report = _run(*setup, norm="l2", eps=(0.0, 0.3), attacks=("fgsm", "pgd", "cw", "square"), corruptions=())
    assert [r["attack"] for r in report["results"]] == ["fgsm", "pgd", "cw"] * 2
    assert report["skipped"] == [
        {"attack": "square", "reason": "implemented for linf only, evaluation norm is l2"}
    ]
    assert report["ensemble"][1]["robust_accuracy"] < report["clean_accuracy"] and report["flags"] == []


class Noisy(nn.Module):
    """Dropout that stays on in eval mode: a stochastic defence."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.dropout(x, 0.3, training=True))


class Quantised(nn.Module):
    """Rounds its input to 8 bits first: the input gradient is exactly zero (shattered gradients)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 255) / 255)


def test_stochastic_model_is_flagged(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = setup
    report = _run(Noisy(net), x, y, eps=(1 / 255,), attacks=("fgsm",), corruptions=(), noise_std=())
    assert "stochastic model" in {f["flag"] for f in report["flags"]}


def test_zero_gradients_and_masking_are_flagged(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = setup
    report = _run(Quantised(net), x, y, eps=(4 / 255,), square_queries=100, corruptions=(), noise_std=())
    flags = {f["flag"] for f in report["flags"]}
    assert "zero gradients" in flags
    assert "possible gradient masking" in flags  # square fools what the blinded gradient attacks cannot
    assert all(r["fooled"] == 0 for r in report["results"] if r["attack"] != "square")
    # with no white-box attack to compare against, a black-box success says nothing about masking
    alone = _run(
        Quantised(net),
        x,
        y,
        eps=(4 / 255,),
        attacks=("square",),
        square_queries=100,
        corruptions=(),
        noise_std=(),
    )
    assert alone["ensemble"][0]["robust_accuracy"] < alone["clean_accuracy"]
    assert "possible gradient masking" not in {f["flag"] for f in alone["flags"]}


class Detached(nn.Module):
    """Cuts its input out of the autograd graph: no input gradient exists at all."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.detach())


class NaNGradient(nn.Module):
    """Same outputs as net, but d/dx of 0 * sqrt(x - x) is 0 * inf = NaN."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x + 0 * torch.sqrt(x - x.detach()))


def _use_attack(monkeypatch: pytest.MonkeyPatch, name: str, fn) -> None:
    """Make the registry's `name` run `fn` instead (a deliberately broken attack)."""
    from birdshield.attacks.registry import AttackSpec

    real = AttackSpec.load
    monkeypatch.setattr(AttackSpec, "load", lambda spec: fn if spec.name == name else real(spec))


def _result(model: nn.Module, x_adv: Tensor, y: Tensor) -> AttackResult:
    logits = model(x_adv)
    return AttackResult(x_adv, logits, logits.argmax(1) != y)


def _no_gradient_report(setup, monkeypatch) -> dict:
    net, x, y = setup
    return _run(Detached(net), x, y, eps=(0.0,), attacks=(), corruptions=(), noise_std=())


def _nan_gradient_report(setup, monkeypatch) -> dict:
    net, x, y = setup
    return _run(NaNGradient(net), x, y, eps=(0.0,), attacks=(), corruptions=(), noise_std=())


def _erratic_attack_report(setup, monkeypatch) -> dict:
    """An attack that gives up at larger eps: more images survive 4/255 than 1/255."""
    net, x, y = setup
    fgsm = get_spec("fgsm").load()

    def erratic(model, x, y, eps, return_result=False, **kw):
        x_adv = fgsm(model, x, y, eps=eps) if eps < 2 / 255 else x
        return _result(model, x_adv, y)

    _use_attack(monkeypatch, "fgsm", erratic)
    return _run(net, x, y, eps=(1 / 255, 4 / 255), attacks=("fgsm",), corruptions=(), noise_std=())


def _overshooting_attack_report(setup, monkeypatch) -> dict:
    net, x, y = setup

    def overshoot(model, x, y, eps, return_result=False, **kw):
        return _result(model, (x + 3 * eps).clamp(0, 1), y)

    _use_attack(monkeypatch, "fgsm", overshoot)
    return _run(net, x, y, eps=(2 / 255,), attacks=("fgsm",), corruptions=(), noise_std=())


def _miscounted_report(setup, monkeypatch) -> dict:
    """A tally whose robust count exceeds its clean count (only a bookkeeping bug can make one)."""
    tally = Tally(n=10, clean=5, ensemble=Counter({0.0: 6}))
    cfg = dataclasses.replace(FAST, eps=(0.0,), attacks=("fgsm",))
    return {"flags": final_flags(tally, cfg, ["fgsm"])}


class Offset(nn.Module):
    """`net` with one logit raised: a forward-only twin that does not compute what the model computes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) + torch.tensor([5.0, 0, 0, 0, 0])


def _forward_model_differs_report(setup, monkeypatch) -> dict:
    net, x, y = setup
    return _run(net, x, y, eps=(0.0,), attacks=(), corruptions=(), noise_std=(), forward_model=Offset(net))


CRAFTED = {
    "no input gradient": _no_gradient_report,
    "non-finite gradients": _nan_gradient_report,
    "robust accuracy rises with eps": _erratic_attack_report,
    "perturbation outside the eps-ball": _overshooting_attack_report,
    "robust above clean": _miscounted_report,
    "forward model differs": _forward_model_differs_report,
}
TESTED_ABOVE = {"stochastic model", "zero gradients", "possible gradient masking"}


@pytest.mark.parametrize("flag", sorted(CRAFTED))
def test_each_sanity_flag_is_raised_by_its_crafted_case_only(
    flag: str, setup, cascade: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised = {f["flag"] for f in CRAFTED[flag](setup, monkeypatch)["flags"]}
    assert flag in raised
    assert flag not in {f["flag"] for f in cascade["flags"]}  # the clean evaluation raises none


def test_every_sanity_flag_has_a_crafted_case() -> None:
    import birdshield.evaluation.checks as checks

    names = set(re.findall(r'"flag": "([^"]+)"', Path(checks.__file__).read_text()))
    assert names == set(CRAFTED) | TESTED_ABOVE


def test_report_files(cascade: dict, setup: tuple[nn.Module, Tensor, Tensor], tmp_path: Path) -> None:
    net, x, y = setup
    examples: list = []
    evaluate(net, _batches(x[:16], y[:16]), FAST, examples=examples)
    assert 0 < len(examples) <= 4
    md = write_evaluate_report(cascade, tmp_path, examples)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved) >= REPORT_KEYS
    assert saved["images"] == []  # tensors have no file names to pair photos by
    keys = {"attack", "norm", "eps", "robust_accuracy", "ci95", "fooled", "n_attacked", "n", "seconds"}
    assert set(saved["results"][0]) == keys
    assert {c["label"] for c in saved["corruptions"]} >= {"gaussian_noise std=0.1", "jpeg severity=1"}
    text = md.read_text()
    assert "No sanity flags raised." in text and "ensemble (worst case)" in text
    for png in ("accuracy_vs_eps.png", "examples.png"):
        assert Image.open(tmp_path / png).size[0] > 100


# ------------------------------------------------------------------------------------------ real run, CLI


def test_evaluate_samples_skips_bad_images(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    model = load(tiny_run)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    samples = [data.Sample(p, 0) for p in sorted((tiny_data / "test").rglob("*.jpg"))[:3]] + [
        data.Sample(bad, 1)
    ]
    cfg = EvalConfig(attacks=("fgsm",), eps=(2 / 255,), corruptions=(), noise_std=(), batch_size=2)
    report = evaluate_samples(model, samples, cfg)
    assert report["n"] == 3
    assert [b["path"] for b in report["bad_images"]] == [str(bad)]


def test_evaluate_cli(tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", str(tiny_run), str(tiny_data), "--out", str(out), "--attacks", "fgsm,pgd,square"]
    argv += ["--eps", "0,2/255,8/255", "--steps", "3", "--square-queries", "20", "--n-images", "9"]
    argv += ["--corruptions", "gaussian_noise", "--severities", "1", "--noise-std", "0.1", "--targets", "2"]
    assert main([*argv, "--surrogate", str(tiny_run)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["n_target_classes"] == 2 and report["config"]["square_queries"] == 20
    assert report["n"] == 9 and report["split"] == "test" and report["model"]["run_dir"] == str(tiny_run)
    assert report["ensemble"][0]["robust_accuracy"] == report["clean_accuracy"]
    assert report["trained_against"]["adversarial"]["method"] == "none"
    assert [r["attack"] for r in report["results"]][:4] == ["fgsm", "pgd", "transfer", "square"]
    images = report["images"]  # each photo's outcome, adding up to the report's counts
    assert len({im["image"] for im in images}) == 9
    assert sum(im["correct"] for im in images) == round(report["clean_accuracy"] * 9)
    for e in report["ensemble"]:
        survived = [im["robust"][str(e["eps"])] for im in images]
        assert sum(survived) == round(e["robust_accuracy"] * 9)
        assert all(im["correct"] for im, alive in zip(images, survived, strict=True) if alive)
    assert [im["robust"]["0.0"] for im in images] == [im["correct"] for im in images]  # eps 0: clean
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and "sanity flags" in printed and "report.md" in printed
    assert main(["evaluate", str(tiny_run), str(tiny_data), "--out", str(out), "--attacks", "nope"]) == 2


def test_a_faithful_forward_model_changes_no_number(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    """The forward-only twin takes the clean pass, corruptions and Square's queries: a copy of the model
    there gives the report of the model alone, with no flag."""
    net, x, y = setup
    calls = []
    twin = Offset(net)
    twin.forward = lambda images: calls.append(len(images)) or net(images)
    changes = {"attacks": ("fgsm", "square"), "noise_std": (0.1,), "square_queries": 30}
    alone, twinned = _run(net, x, y, **changes), _run(net, x, y, **changes, forward_model=twin)
    assert len(calls) > 2 * 4  # 4 chunks: clean + noise each, and Square's queries
    assert twinned["config"].pop("forward_model") == "Offset"
    alone["config"].pop("forward_model")
    assert _numbers(twinned) == _numbers(alone) and twinned["flags"] == []


def test_evaluate_cli_onnx_runtime_gives_the_torch_numbers(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    argv = ["evaluate", str(tiny_run), str(tiny_data), "--attacks", "pgd,square", "--eps", "2/255"]
    argv += ["--steps", "3", "--square-queries", "20", "--corruptions", "gaussian_noise", "--severities", "1"]
    reports = {}
    for runtime in ("torch", "onnx"):
        assert main([*argv, "--out", str(tmp_path / runtime), "--runtime", runtime]) == 0
        reports[runtime] = json.loads((tmp_path / runtime / "report.json").read_text())
    assert reports["onnx"]["config"].pop("forward_model") == "OnnxClassifier"
    assert reports["torch"]["config"].pop("forward_model") is None
    assert _numbers(reports["onnx"]) == _numbers(reports["torch"])
    assert reports["onnx"]["flags"] == []


def _png_inputs(tiny_data: Path, tmp_path: Path) -> Path:
    """A folder of 48 px test photos in class folders plus one unreadable file."""
    src = tmp_path / "in"
    shutil.copytree(tiny_data / "test", src)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return src


def test_attack_cli(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    src, out = _png_inputs(tiny_data, tmp_path), tmp_path / "adv"
    eps = 4 / 255
    argv = ["attack", str(tiny_run), str(src), "--out", str(out), "--attack", "pgd", "--eps", "4/255"]
    assert main([*argv, "--steps", "3"]) == 0
    rows = list(csv.DictReader((out / "attack.csv").open()))
    inputs = data.list_images(src)
    assert len(rows) == len(inputs) == 13
    (bad,) = [r for r in rows if r["error"]]
    assert bad["image"].endswith("broken.jpg") and not bad["output"]
    for row in (r for r in rows if not r["error"]):
        orig = Path(row["image"])
        png = out / orig.relative_to(src).with_suffix(".png")
        assert row["output"] == str(png) and row["label_source"] == "folder"
        adv = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255
        ref = data.to_tensor(data.read_rgb(orig), 48).permute(1, 2, 0).numpy()
        assert adv.shape == (48, 48, 3)
        assert np.abs(adv - ref).max() <= eps + 1 / 255 + 1e-6
        assert float(row["linf"]) <= eps + 1e-6


def test_attack_writes_a_file_name_that_is_not_utf8_as_its_bytes(tiny_run: Path, tmp_path: Path, make_image):
    folder = tmp_path / "in"
    make_image(folder / os.fsdecode(b"bird\xff.jpg"), seed=3)
    assert main(["attack", str(tiny_run), str(folder), "--out", str(tmp_path / "adv"), "--steps", "1"]) == 0
    assert sorted(os.listdir(os.fsencode(tmp_path / "adv"))) == [b"attack.csv", b"bird\xff.png"]
    table = (tmp_path / "adv" / "attack.csv").read_bytes()
    assert os.fsencode(folder) + b"/bird\xff.jpg," in table and b"/bird\xff.png," in table


def test_attack_never_overwrites_inputs(tiny_run: Path, tmp_path: Path, make_image) -> None:
    folder = tmp_path / "pngs"
    img = make_image(folder / "blue jay" / "a.png", seed=3)
    before = img.read_bytes()
    assert main(["attack", str(tiny_run), str(folder), "--out", str(folder), "--steps", "1"]) == 2
    same_place = ["attack", str(tiny_run), str(img), "--out", str(img.parent), "--steps", "1"]
    assert main(same_place) == 2  # a.png given as a file, output a.png in its own folder
    assert img.read_bytes() == before
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png", "blue jay"]


def test_attack_replaces_an_earlier_runs_files_only_with_overwrite(
    tiny_run: Path, tmp_path: Path, make_image
) -> None:
    img = make_image(tmp_path / "in" / "a.jpg", seed=3)
    out = tmp_path / "adv"
    argv = ["attack", str(tiny_run), str(img), "--out", str(out), "--steps", "1"]
    assert main(argv) == 0
    (out / "a.png").write_bytes(b"the user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, nothing added
    assert main([*argv, "--overwrite"]) == 0
    assert Image.open(out / "a.png").size == (48, 48)


# ------------------------------------------------------------------------------------------ resume


def _numbers(report: dict) -> dict:
    """The report without its timings (the only numbers a resumed run may change)."""
    report = json.loads(json.dumps(report))
    del report["seconds"]
    for row in report["results"]:
        del row["seconds"]
    return report


class Stop(Exception):
    pass


def _stop_after_chunk(k: int):
    chunks = []

    def on_progress(stage: str, done: int, total: int | None) -> None:
        chunks.extend([done] if stage == "done" else [])
        if len(chunks) == k:
            raise Stop

    return on_progress


def test_resumed_evaluation_gives_the_same_report(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    model = load(tiny_run)
    samples = samples_for_model(data.discover(tiny_data), "test", model.class_names)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    samples = [*samples[:5], data.Sample(bad, 0), *samples[5:]]
    cfg = EvalConfig(
        attacks=("fgsm", "pgd", "square"),
        eps=(2 / 255, 8 / 255),
        steps={"pgd": 3},
        square_queries=20,
        corruptions=("gaussian_noise",),
        severities=(1,),
        noise_std=(0.1,),
        batch_size=4,
    )
    whole = evaluate_to_dir(model, samples, cfg, tmp_path / "a", run_dir=tiny_run, split="test")
    out = tmp_path / "b"
    with pytest.raises(Stop):
        evaluate_to_dir(model, samples, cfg, out, on_progress=_stop_after_chunk(2))
    assert (out / "state.json").is_file() and not (out / "report.json").exists()
    with pytest.raises(OutDirError, match="config"):
        evaluate_to_dir(model, samples, dataclasses.replace(cfg, seed=1), out, resume=True)
    with pytest.raises(OutDirError, match="samples"):
        evaluate_to_dir(model, samples[1:], cfg, out, resume=True)
    done: list[int] = []
    resumed = evaluate_to_dir(
        model, samples, cfg, out, resume=True, on_progress=lambda s, n, t: done.append(n), run_dir=tiny_run
    )
    assert done[0] == 7  # the two saved chunks (8 files, one unreadable) were not redone
    assert _numbers(resumed) == _numbers(whole) | {"split": None}
    assert resumed["bad_images"] == [{"path": str(bad), "error": resumed["bad_images"][0]["error"]}]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(resumed))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "a").iterdir())
    assert not (out / "state.json").exists() and (out / "examples.png").is_file()


def test_resume_refuses_an_image_replaced_under_its_name(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """The saved numbers came from the images' bytes: another photo under a measured name is refused (by
    name), one not yet measured is simply read, and the original back resumes."""
    model = load(tiny_run)
    original = samples_for_model(data.discover(tiny_data), "test", model.class_names)
    samples = []
    for i, s in enumerate(original):  # copies that can be replaced
        shutil.copy(s.path, tmp_path / f"{i}.jpg")
        samples.append(data.Sample(tmp_path / f"{i}.jpg", s.label))
    cfg = EvalConfig(attacks=("fgsm",), eps=(8 / 255,), corruptions=(), noise_std=(), batch_size=4)
    out = tmp_path / "out"
    with pytest.raises(Stop):
        evaluate_to_dir(model, samples, cfg, out, on_progress=_stop_after_chunk(1))
    measured, later = samples[1].path, samples[9].path
    kept = measured.read_bytes()
    measured.write_bytes(later.read_bytes())  # another bird's photo under the first chunk's name
    later.write_bytes(kept)  # not measured yet: nothing to refuse
    with pytest.raises(OutDirError, match=rf"{re.escape(str(measured))} changed since"):
        evaluate_to_dir(model, samples, cfg, out, resume=True)
    measured.write_bytes(kept)
    done: list[int] = []
    evaluate_to_dir(model, samples, cfg, out, resume=True, on_progress=lambda s, n, t: done.append(n))
    assert done[0] == 4 and (out / "report.json").is_file()  # the first chunk was kept


def test_progress_fingerprints_file_names_that_are_not_utf8() -> None:
    """Such a name reaches Python as surrogate escapes of its bytes; the fingerprint takes those bytes."""
    from birdshield.evaluation.state import samples_digest

    a, b = (Path(os.fsdecode(b"test/finch/gr\xfc" + end)) for end in (b"n.jpg", b"m.jpg"))
    assert samples_digest([data.Sample(a, 0)]) != samples_digest([data.Sample(b, 0)])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_evaluate_cli_resumes_after_signal(tiny_run: Path, tiny_data: Path, tmp_path: Path, sig: int) -> None:
    """Killed, or stopped by Ctrl-C, after its first chunk: --resume ends with the uninterrupted numbers."""
    argv = ["evaluate", str(tiny_run), str(tiny_data), "--attacks", "fgsm,pgd,square", "--steps", "3"]
    argv += ["--eps", "8/255", "--square-queries", "20", "--n-images", "6", "--batch-size", "2"]
    argv += ["--corruptions", "gaussian_noise", "--severities", "1", "--noise-std", "none"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "b"
    kill_cli_when([*argv, "--out", str(out)], ready=(out / "state.json").is_file, sig=sig)
    assert not (out / "report.json").exists()
    assert 2 <= json.loads((out / "state.json").read_text())["samples_done"] < 6
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    whole, resumed = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert _numbers(resumed) == _numbers(whole)
    assert not (out / "state.json").exists() and (out / "examples.png").is_file()


def test_evaluate_cli_refuses_an_unwritable_out(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["evaluate", str(tiny_run), str(tiny_data), "--out", str(blocker / "report")]
    assert main(argv) == 2
