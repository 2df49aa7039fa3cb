"""Defences: randomized-smoothing statistics and certificates, input transforms with BPDA/EOT, and the CLI."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import beta, norm
from torch import Tensor, nn

from birdshield import data
from birdshield.attacks import pgd
from birdshield.data import stratified_subset
from birdshield.defenses import (
    ABSTAIN,
    EOT,
    JPEG,
    BitDepth,
    Defended,
    MedianFilter,
    Smoothed,
    certified_radius,
    lower_confidence_bound,
    make_defense,
    required_votes,
)
from birdshield.evaluation.certify import certified_accuracy
from birdshield.models import load_checkpoint as load

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- toy base classifiers


class Threshold(nn.Module):
    """Class 0 when the mean pixel is above 0.5, else class 1, with a steep (confident) margin."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([100 * m, -100 * m], dim=1)


class Coin(nn.Module):
    """Ignores its input: a uniformly random class on every call."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes, self.gen = classes, torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.rand(x.shape[0], self.classes, generator=self.gen)


def _images(mean: float, n: int = 2) -> Tensor:
    return torch.full((n, 3, 4, 4), mean)


# ----------------------------------------------------------------------------- smoothing


def test_confident_model_is_certified_with_the_exact_radius() -> None:
    sigma, n, alpha = 0.01, 200, 0.001
    classes, radii = Smoothed(Threshold(), sigma).certify(_images(0.7), n0=20, n=n, alpha=alpha, seed=0)
    assert classes.tolist() == [0, 0]
    expected = sigma * norm.ppf(alpha ** (1 / n))  # every vote for class 0: pA_lower = alpha^(1/n)
    assert radii.tolist() == pytest.approx([expected, expected]) and expected > 0
    classes, _ = Smoothed(Threshold(), sigma).predict(_images(0.3), n=50, alpha=alpha)
    assert classes.tolist() == [1, 1]


def test_radius_grows_with_the_top_class_count() -> None:
    radii = [certified_radius(lower_confidence_bound(k, 100, 0.001), 0.25) for k in range(101)]
    first = next(k for k, r in enumerate(radii) if r is not None)
    assert all(r is None for r in radii[:first]) and first > 50  # abstain until pA_lower >= 1/2
    certified = radii[first:]
    assert all(a < b for a, b in zip(certified, certified[1:], strict=False))


def test_random_model_abstains() -> None:
    classes, radii = Smoothed(Coin(), 0.25).certify(_images(0.5), n0=30, n=300, alpha=0.001)
    assert classes.tolist() == [ABSTAIN, ABSTAIN] and radii.isnan().all()
    classes, counts = Smoothed(Coin(), 0.25).predict(_images(0.5), n=300, alpha=0.001)
    assert classes.tolist() == [ABSTAIN, ABSTAIN] and counts.sum(1).tolist() == [300, 300]


@pytest.mark.parametrize("k,n", [(1, 10), (37, 50), (99, 100), (100, 100), (400, 1000)])
def test_clopper_pearson_matches_beta_quantile(k: int, n: int) -> None:
    alpha = 0.001
    lower = lower_confidence_bound(k, n, alpha)
    assert lower == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)
    assert 0 < lower < k / n
    assert lower_confidence_bound(0, n, alpha) == 0.0


def test_same_seed_same_votes() -> None:
    x = _images(0.5, n=3)  # on the boundary: every vote depends on the noise
    smoothed = Smoothed(Threshold(), 0.5, batch_size=32)
    a, b, c = (smoothed.predict(x, n=100, alpha=0.01, seed=s)[1] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 20 < a[0, 0] < 80  # the noise really decides
    first, second = (smoothed.certify(x, n0=10, n=100, alpha=0.01, seed=7) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1].nan_to_num(), second[1].nan_to_num())


class _Counting(nn.Module):
    """Threshold, counting the noisy images it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return Threshold()(x)


def test_stopping_hopeless_images_early_changes_no_certificate_at_or_above_the_radius_asked() -> None:
    # Means from certain to a coin toss under the noise: radii from large to none
    x = torch.stack([torch.full((3, 4, 4), m) for m in (0.9, 0.6, 0.56, 0.53, 0.5, 0.47)])
    sigma, n, min_radius = 0.2, 400, 0.05
    full_model, early_model = _Counting(), _Counting()
    full = Smoothed(full_model, sigma, batch_size=20).certify(x, n0=20, n=n, alpha=0.01, seed=5)
    early = Smoothed(early_model, sigma, batch_size=20).certify(
        x, n0=20, n=n, alpha=0.01, seed=5, min_radius=min_radius
    )
    full_r, early_r = full[1].nan_to_num(-1.0), early[1].nan_to_num(-1.0)
    reached = full_r >= min_radius
    assert 0 < int(reached.sum()) < len(x)  # some images reach the radius, some do not
    assert torch.equal(early_r[reached], full_r[reached])  # the same certificates where they count
    assert torch.equal(early[0][reached], full[0][reached])
    assert (
        early_r[~reached] == -1
    ).all()  # the others abstain: never a certificate the full n would not give
    assert early_model.images < full_model.images  # and they cost fewer forward passes
    assert required_votes(n, 0.01, sigma, 0.0) == 0 and required_votes(n, 0.01, sigma, 10.0) == n + 1


class _Recorder(nn.Module):
    """Records the batches it is given; with a parameter (a torch model) or without (like an ONNX session)."""

    def __init__(self, with_parameter: bool) -> None:
        super().__init__()
        self.seen: list[Tensor] = []
        if with_parameter:
            self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), 3)


@pytest.mark.parametrize("with_parameter", [True, False])
def test_noise_batches_are_fresh_draws_from_one_reused_buffer(with_parameter: bool) -> None:
    x = torch.rand(3, 8, 12)
    model = _Recorder(with_parameter)
    smoothed = Smoothed(model, 0.37, batch_size=30)
    smoothed._votes(x, [20, 75], torch.Generator().manual_seed(3))
    smoothed._votes(x, [7], torch.Generator().manual_seed(4))
    expected = []
    for seed, sizes in ((3, [30, 30, 30, 5]), (4, [7])):
        gen = torch.Generator().manual_seed(seed)
        expected += [torch.randn((b, 8, 12, 3), generator=gen).permute(0, 3, 1, 2) * 0.37 + x for b in sizes]
    assert [tuple(t.shape) for t in model.seen] == [tuple(t.shape) for t in expected]
    assert all(torch.equal(a, b) for a, b in zip(model.seen, expected, strict=True))
    # an ONNX session (no parameters) gets contiguous NCHW, so OnnxClassifier.forward copies nothing
    assert all(t.is_contiguous() for t in model.seen) == (not with_parameter)


def test_certified_accuracy_and_subset() -> None:
    images = [
        {"correct": True, "radius": 0.6},
        {"correct": True, "radius": 0.1},
        {"correct": False, "radius": 0.9},
        {"correct": False, "radius": None},
    ]
    curve = certified_accuracy(images, [0.0, 0.1, 0.2, 0.6, 0.7])
    assert [row["accuracy"] for row in curve] == [0.5, 0.5, 0.25, 0.25, 0.0]
    samples = [data.Sample(Path(f"{c}/{i}.jpg"), c) for c in range(3) for i in range(5 + c)]
    picked = stratified_subset(samples, 7, seed=3)
    assert len(picked) == 7 and sorted(Counter(s.label for s in picked).values()) == [2, 2, 3]
    assert picked == stratified_subset(samples, 7, seed=3)


# ----------------------------------------------------------------------------- input transforms


class Net(nn.Module):
    """A small random conv net: smooth, with a non-trivial input gradient everywhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


TRANSFORMS = [JPEG(50), JPEG((30, 90)), BitDepth(3), MedianFilter(3)]


def _rand(seed: int = 0) -> Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", TRANSFORMS, ids=repr)
def test_transform_output_in_unit_box(t: nn.Module) -> None:
    out = t(_rand())
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_identities_and_jpeg_is_a_pil_round_trip() -> None:
    x8 = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0)) / 255
    assert torch.equal(BitDepth(8)(x8), x8)
    assert torch.equal(MedianFilter(1)(_rand()), _rand())
    spike = torch.full((1, 3, 9, 9), 0.25)
    spike[..., 4, 4] = 1.0
    assert torch.equal(MedianFilter(3)(spike), torch.full_like(spike, 0.25))
    for i, img in enumerate((x8 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=40)
        expected = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1) / 255
        assert torch.equal(JPEG(40)(x8)[i], expected)


@pytest.mark.parametrize(
    ("name", "param", "reason"),
    [
        ("median", 17, "odd size in 1..15"),  # unfold takes 3*H*W*k^2 floats: 201 at 224 px is ~24 GB
        ("median", 201, "odd size in 1..15"),
        ("median", 4, "odd size"),
        ("median", float("inf"), "whole number"),
        ("jpeg", float("nan"), "whole number"),
        ("jpeg", 96, "1..95"),
        ("bits", 17, "1..16"),
        ("smoothing", float("nan"), "sigma must be > 0"),
        ("smoothing", float("inf"), "sigma must be > 0"),
    ],
)
def test_a_parameter_out_of_its_range_is_refused_before_any_work(name: str, param: float, reason: str):
    with pytest.raises(ValueError, match=re.escape(reason)):
        make_defense(name, param)


def test_the_largest_median_kernel_still_filters():
    spike = torch.full((1, 3, 20, 20), 0.25)
    spike[..., 5:8, 5:8] = 1.0  # 9 bright pixels are fewer than half of any 15 x 15 window
    assert torch.equal(MedianFilter(15)(spike), torch.full_like(spike, 0.25))


@pytest.mark.parametrize("t", TRANSFORMS[:1] + TRANSFORMS[2:], ids=repr)
def test_bpda_gradient_is_the_models_gradient_at_the_transformed_point(t: nn.Module) -> None:
    net, x = Net().eval(), _rand().requires_grad_(True)
    out = Defended(net, t)(x)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    xt = t.transform(x.detach()).requires_grad_(True)
    ref = net(xt)
    (ref_grad,) = torch.autograd.grad(ref[:, 0].sum(), xt)
    assert torch.equal(out, ref) and grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad)
    t.bpda = False
    try:
        (masked,) = torch.autograd.grad(Defended(net, t)(x)[:, 0].sum(), x)
    finally:
        t.bpda = True
    assert not masked.any()


def test_eot_averages_random_draws() -> None:
    net, x = Net().eval(), _rand()
    eot = EOT(Defended(net, JPEG((30, 90), seed=5)), samples=4)
    twin = Defended(net, JPEG((30, 90), seed=5))
    with torch.no_grad():
        torch.testing.assert_close(eot(x), torch.stack([twin(x) for _ in range(4)]).mean(0))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(eot(xg)[:, 0].sum(), xg)
    assert grad.abs().sum() > 0


def test_bpda_attack_beats_the_masked_gradient(tiny_run: Path, tiny_data: Path) -> None:
    """Without BPDA, PGD gets zero gradients and the JPEG defence looks robust; with BPDA it is not."""
    model = load(tiny_run)
    samples = data.discover(tiny_data).splits["test"]
    x = torch.stack([data.to_tensor(data.read_rgb(s.path), model.image_size) for s in samples])
    y = torch.tensor([s.label for s in samples])
    accuracy = {}
    for bpda in (True, False):
        defended = Defended(model, JPEG(75, bpda=bpda))
        x_adv = pgd(defended, x, y, eps=16 / 255, steps=10, seed=0)
        with torch.no_grad():
            accuracy[bpda] = (defended(x_adv).argmax(1) == y).float().mean().item()
    with torch.no_grad():
        clean = (Defended(model, JPEG(75))(x).argmax(1) == y).float().mean().item()
    assert accuracy[True] < accuracy[False] <= clean, accuracy


def test_certify_resume_refuses_an_image_replaced_under_its_name(
    tiny_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certified image's record came from its bytes: another photo under its name is refused, by name."""
    from birdshield.errors import OutDirError
    from birdshield.evaluation.certify import certify_to_dir
    from birdshield.evaluation.state import CertifyLog

    model = load(tiny_run)
    samples = []
    for i, s in enumerate(data.samples_for_model(data.discover(tiny_data), "test", model.class_names)[:4]):
        (tmp_path / f"{i}.jpg").write_bytes(s.path.read_bytes())  # copies that can be replaced
        samples.append(data.Sample(tmp_path / f"{i}.jpg", s.label))
    params = {"sigma": 0.25, "n0": 8, "n": 20, "alpha": 0.1, "batch_size": 20}
    append, records = CertifyLog.append, []

    def append_then_stop(self: CertifyLog, record: dict, *digest: str) -> None:
        append(self, record, *digest)
        records.append(record)
        if len(records) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(CertifyLog, "append", append_then_stop)
        certify_to_dir(model, samples, out, **params)
    kept = samples[1].path.read_bytes()
    samples[1].path.write_bytes(samples[3].path.read_bytes())
    with pytest.raises(OutDirError, match=f"{re.escape(str(samples[1].path))} changed since"):
        certify_to_dir(model, samples, out, resume=True, **params)
    samples[1].path.write_bytes(kept)
    result = certify_to_dir(model, samples, out, resume=True, **params)
    assert result["images"][:2] == records  # kept, not certified again
