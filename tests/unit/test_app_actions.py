"""The page's actions without a browser: predictions, attacks, smoothing, uploads, reports, Stop."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_CLASSES, textured_image, tiny_model
from PIL import Image
from scipy.stats import norm
from torch import nn

from birdshield import data
from birdshield.app import actions, host_warning, reports
from birdshield.app.jobs import Cancelled, JobGuard
from birdshield.defenses import make_defense

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served() -> list[actions.Served]:
    """Two random tiny models of different input sizes (so the adversarial image is resized for one)."""
    return [
        actions.calibrated(actions.Served("a", tiny_model(image_size=32, seed=0))),
        actions.Served("b", tiny_model(image_size=40, seed=1)),
    ]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return textured_image(3, size=(60, 45))


def test_predict_ranks_every_models_classes_best_first(served, photo):
    tops = actions.predict_image(served, photo, top_k=3)
    assert len(tops) == 2
    for s, top in zip(served, tops, strict=True):
        x = data.to_tensor(photo, s.model.image_size)[None]
        probs = s.model(x).softmax(1)[0]
        assert [name for name, _ in top] == [TINY_CLASSES[i] for i in probs.argsort(descending=True)]
        assert [p for _, p in top] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-6)


def test_model_view_is_the_resized_centre_crop(served, photo):
    view = actions.model_view(served[1].model, photo)
    assert view.shape == (40, 40, 3) and view.dtype == np.uint8
    expected = (data.to_tensor(photo, 40) * 255).round().permute(1, 2, 0).numpy()
    assert np.array_equal(view, expected.astype(np.uint8))


def test_an_input_transform_runs_before_every_model(served, photo):
    bits = make_defense("bits", 1)
    view = actions.transformed_view(served[0].model, photo, bits)
    assert set(np.unique(view)) <= {0, 255}
    squashed = Image.fromarray(view)
    direct = actions.predict_image(served[:1], squashed, top_k=3)[0]
    through = actions.predict_image(served[:1], photo, top_k=3, defense=bits)[0]
    assert [n for n, _ in direct] == [n for n, _ in through]
    assert [p for _, p in direct] == pytest.approx([p for _, p in through], abs=1e-5)


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_a_linf_attack_stays_in_the_ball_on_the_8_bit_grid(served, photo, attack):
    eps = 8 / 255
    out = actions.attack_image(served, photo, attack=attack, eps=eps, steps=3)
    original, adversarial = out.original.astype(int), out.adversarial.astype(int)
    assert out.adversarial.dtype == np.uint8 and out.adversarial.shape == (32, 32, 3)
    assert np.abs(adversarial - original).max() <= 8
    assert out.linf == pytest.approx(np.abs(adversarial - original).max() / 255)
    assert out.l2 == pytest.approx(np.sqrt((((adversarial - original) / 255) ** 2).sum()), rel=1e-5)
    assert out.linf > 0 and out.seconds > 0 and len(out.predictions) == 2
    # every model judged exactly these pixels (the other model after its usual resize)
    judged = Image.fromarray(out.adversarial)
    assert out.predictions == actions.predict_image(served, judged)
    png = Image.open(io.BytesIO(out.png()))
    assert png.format == "PNG" and np.array_equal(np.asarray(png), out.adversarial)
    assert out.fooled == (out.predictions[0][0][0] != out.label)


def test_an_l2_attack_stays_in_the_ball_after_rounding(served, photo):
    eps = 0.3
    out = actions.attack_image(served, photo, attack="pgd", eps=eps, norm="l2", steps=3, attacked=1)
    delta = (out.adversarial.astype(float) - out.original.astype(float)) / 255
    assert out.adversarial.shape == (40, 40, 3)
    assert 0 < np.sqrt((delta**2).sum()) <= eps + 1e-6
    assert out.l2 == pytest.approx(np.sqrt((delta**2).sum()), rel=1e-5)


def test_eps_zero_changes_nothing(served, photo):
    out = actions.attack_image(served, photo, attack="pgd", eps=0.0, steps=2)
    assert np.array_equal(out.adversarial, out.original)
    assert out.linf == 0 and out.l2 == 0 and out.magnification == 0
    assert np.all(out.perturbation == 128)  # mid-grey: no change
    assert out.predictions == actions.predict_image(served, Image.fromarray(out.original))


def test_a_targeted_attack_names_its_target_and_bad_options_are_refused(served, photo):
    target = TINY_CLASSES[2]
    out = actions.attack_image(served, photo, attack="pgd", eps=16 / 255, steps=5, target=target)
    assert out.targeted and out.label == target
    assert out.fooled == (out.predictions[0][0][0] == target)
    with pytest.raises(ValueError, match="unknown target"):
        actions.attack_image(served, photo, attack="pgd", eps=0.01, target="dodo")
    with pytest.raises(ValueError, match="l2 only"):
        actions.attack_image(served, photo, attack="cw", eps=0.01, norm="linf")


def test_the_page_offers_the_attacks_that_need_only_the_model(served):
    names = actions.page_attacks(served)
    assert {"fgsm", "pgd", "apgd-ce", "square", "cw"} <= set(names)
    assert "transfer" not in names and "apgd-t" not in names  # surrogate; needs >= 4 classes (3 here)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image file"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_bad_bytes_raise_a_clear_error(tmp_path: Path, content, reason):
    path = tmp_path / "upload.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        textured_image(1, size=(64, 64)).save(buf, format="JPEG")
        content = buf.getvalue()[:300]
    path.write_bytes(content)
    with pytest.raises(data.BadImageError) as e:
        actions.read_photo(path)
    assert reason in e.value.reason
    assert actions.photo_error(e.value).startswith(f"Cannot use upload.jpg: {reason}")


def test_too_many_bytes_or_pixels_are_refused_before_decoding(tmp_path: Path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(data.BadImageError, match="file too large"):
        actions.read_photo(path, max_mb=path.stat().st_size / 2 / actions.MB)
    with pytest.raises(data.BadImageError, match="image too large"):
        actions.read_photo(path, max_pixels=300 * 200 - 1)
    assert actions.read_photo(path).size == (300, 200)


class _Brightness(nn.Module):
    """Class 0 when the image is brighter than mid-grey, class 1 when darker: noise decides at grey."""

    class_names = ["bright", "dark"]
    image_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([m, -m], dim=1) * self.scale


def test_smoothing_certifies_a_clear_vote_and_abstains_on_a_tie():
    served = [actions.Served("toy", _Brightness())]
    clear = actions.certify_image(served, Image.new("RGB", (8, 8), (230, 230, 230)), sigma=0.25, n=200)[0]
    assert clear.prediction == "bright" and clear.votes[0] == ("bright", 1.0)
    # all 200 votes agree: pA_lower = 0.001 ** (1 / 200), radius = sigma * Phi^-1(pA_lower)
    assert clear.radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 200)))
    tie = actions.certify_image(served, Image.new("RGB", (8, 8), (128, 128, 128)), sigma=1.0, n=200)[0]
    assert tie.prediction is None and tie.radius is None
    assert sum(p for _, p in tie.votes) == pytest.approx(1.0)


def test_time_estimates_follow_the_measured_forward_time(monkeypatch):
    """calibrated() times one batch and certify_image re-times from its own run; the estimate before a
    smoothing job is (n0 + n) forwards at that rate. A fake clock makes the arithmetic exact."""
    ticks = iter([10.0, 12.0])  # calibration: a batch of 8 images in 2 s
    monkeypatch.setattr(actions.time, "perf_counter", lambda: next(ticks))
    served = [actions.calibrated(actions.Served("toy", _Brightness()), batch=8)]
    assert served[0].seconds_per_image == 0.25
    assert actions.smoothing_seconds(served, 1000) == pytest.approx(1100 * 0.25)
    ticks = iter([0.0, 33.0])  # a certification of n0 + n = 100 + 200 samples in 33 s
    actions.certify_image(served, Image.new("RGB", (8, 8), (230, 230, 230)), sigma=0.25, n=200)
    assert served[0].seconds_per_image == pytest.approx(33.0 / 300)


def test_stop_cancels_only_the_owners_running_job(photo):
    model, guard = tiny_model(image_size=32, seed=2), JobGuard()
    guard.watch(model)
    x = torch.rand(1, 3, 32, 32)
    assert not guard.stop("visitor")  # nothing runs
    with guard.job("visitor"):
        assert not guard.stop("someone else")
        model(x)
        assert guard.stop("visitor")
        with pytest.raises(Cancelled):
            model(x)
    model(x)  # the next job starts clean


def test_reports_are_listed_and_opened_only_under_the_root(tmp_path: Path):
    root, outside = tmp_path / "reports", tmp_path / "private"
    (root / "runs" / "eval").mkdir(parents=True)
    text = "# Robustness report\n| a | b |\n|---|---|\n![accuracy](accuracy_vs_eps.png)\n<IMG src='http://x.org/b'>"
    (root / "runs" / "eval" / "report.md").write_text(text)
    Image.new("RGB", (4, 4)).save(root / "runs" / "eval" / "accuracy_vs_eps.png")
    (root / "notes").mkdir()
    outside.mkdir()
    (outside / "certify.md").write_text("secret")
    (root / "link").symlink_to(outside)
    (root / "runs" / "eval" / "certify.md").symlink_to(outside / "certify.md")
    assert reports.find_reports(root) == ["runs/eval"]
    report = reports.open_report(root, "runs/eval")
    assert "Robustness report" in report.markdown and "secret" not in report.markdown
    assert report.markdown.rstrip().endswith("|---|---|")  # images dropped: plots are shown, no remote fetch
    assert [p.name for p in report.plots] == ["accuracy_vs_eps.png"]
    for name in ["link", "../private", str(outside), "notes"]:
        with pytest.raises(ValueError, match="no report folder"):
            reports.open_report(root, name)


def test_a_non_local_host_gets_a_warning():
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "reachable from other machines" in (host_warning("0.0.0.0") or "")
