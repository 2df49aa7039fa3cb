"""Adversarial training options: recorded in the checkpoint, robust selection, presets, overfitting stop."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_meta

from birdshield.models import create_model
from birdshield.training.config import (
    FLAT_FIELDS,
    PRESETS,
    AdvConfig,
    AugmentConfig,
    TrainConfig,
    auto_teacher_config,
    config_from_options,
    preset_defaults,
)
from birdshield.training.robust import (
    CONSISTENCY_ENTROPY,
    Teacher,
    adversarial_loss,
    catastrophic_overfitting,
    consistency_loss,
)
from birdshield.training.state import TrainState
from birdshield.training.validation import keep_if_best


def test_robust_selection_keeps_the_robust_best_not_the_clean_best(tmp_path: Path):
    model = create_model(["a", "b"], arch="test_efficientnet", weights=None, image_size=32)
    state, scores = TrainState(), []
    epochs = [  # clean accuracy falls while robust accuracy rises, then robust falls back
        {"loss": 0.1, "accuracy": 0.9, "robust_accuracy": 0.1},
        {"loss": 0.2, "accuracy": 0.6, "robust_accuracy": 0.4},
        {"loss": 0.1, "accuracy": 0.95, "robust_accuracy": 0.3},
    ]
    for epoch, valid in enumerate(epochs, start=1):
        scores.append(keep_if_best(state, valid, epoch, model, tmp_path, {}, write=True))
        assert run_meta(tmp_path)["metrics"]["epoch"] == [1, 2, 2][epoch - 1]
    assert scores == [True, True, False] and (state.best_epoch, state.best_score) == (2, 0.4)
    plain = TrainState()  # without a robust score the clean accuracy decides
    kept = [keep_if_best(plain, {"loss": 0, "accuracy": a}, 1, model, tmp_path, {}, False) for a in (0.5, 1)]
    assert kept == [True, True] and plain.best_score == 1


def test_from_preset_sets_the_recipe_and_explicit_options_win():
    cfg = TrainConfig.from_preset("robust-cpu", data="d", out="o", adv_steps=1, epochs=2)
    assert (cfg.data, cfg.out) == ("d", "o")
    assert cfg.image_size == 160 and cfg.depth == "full" and cfg.label_smoothing == 0.0 and cfg.patience == 6
    assert cfg.adv.method == "pgd" and cfg.adv.eps == pytest.approx(4 / 255) and cfg.adv.select == "robust"
    assert cfg.adv.warmup_epochs == 2 and cfg.warmup_epochs == 1.0  # adv_warmup_epochs is eps's, not the LR's
    assert cfg.adv.steps == 1 and cfg.epochs == 2  # explicit options win over the preset's 3 and 20
    assert cfg.teacher == "standard" and cfg.ema_decay == 0.99 and cfg.backbone_lr == 5e-4
    assert cfg.arch == "tf_efficientnet_lite1" and cfg.tta_flip
    gpu = TrainConfig.from_preset("robust-gpu", data="d", out="o", adv_steps=1, epochs=2)
    assert (gpu.arch, gpu.image_size, gpu.patience) == ("tf_efficientnet_lite2", 260, 8)
    assert replace(gpu, arch=cfg.arch, image_size=160, patience=6) == cfg  # robust-cpu's recipe otherwise


def test_automatic_teachers_train_their_own_recipe_on_the_students_data_and_seed():
    student = TrainConfig.from_preset("robust-cpu", data="d", out="o", seed=3, weights="lite1.pth")
    auto = auto_teacher_config(replace(student, teacher="auto"))
    assert (auto.arch, auto.weights, auto.augment.noise_max) == ("tf_efficientnet_lite1", "lite1.pth", 0.2)
    standard = auto_teacher_config(student)
    default = TrainConfig("d", "o/teacher", seed=3, resume=True)
    assert standard == default  # the default recipe: its own backbone and size, no noise, no attacks
    for teacher in (auto, standard):
        assert (teacher.data, teacher.out, teacher.seed, teacher.adv.method) == ("d", "o/teacher", 3, "none")


def test_public_presets_are_the_ones_a_user_chooses_from():
    assert sorted(PRESETS) == ["original", "robust-cpu", "robust-gpu", "smoothing", "smoothing-0.5"]
    half = TrainConfig.from_preset("smoothing-0.5", "d", "o")
    assert half.augment.noise_sigma == 0.5 and half.consistency == 10  # the recipe chosen on validation


def test_preset_defaults_are_the_flat_options_the_preset_gives():
    plain, smoothing = preset_defaults(), preset_defaults("smoothing")
    assert set(plain) == set(FLAT_FIELDS)
    assert plain["noise_sigma"] == 0.0 and plain["adv_method"] == "none" and plain["epochs"] == 6
    assert {k: v for k, v in smoothing.items() if plain[k] != v} == PRESETS["smoothing"].overrides
    for name in PRESETS:  # every preset names real options with valid values
        from_defaults = config_from_options("d", "o", **preset_defaults(name))
        assert from_defaults == TrainConfig.from_preset(name, "d", "o")


def test_flat_option_names_reach_every_config_field_once():
    paths = [f.name for f in fields(TrainConfig) if f.name not in ("data", "out", "augment", "adv")]
    paths += [f"augment.{f.name}" for f in fields(AugmentConfig)]
    paths += [f"adv.{f.name}" for f in fields(AdvConfig)]
    assert sorted(FLAT_FIELDS.values()) == sorted(paths)  # no two options share a name
    cfg = config_from_options("d", "o", adv_eps=0.1, adv_method="fgsm", clean_weight=0.5, zoom=0.2, seed=3)
    assert cfg.adv == AdvConfig(method="fgsm", eps=0.1, clean_weight=0.5)
    assert cfg.augment == AugmentConfig(zoom=0.2) and cfg.seed == 3


def test_unknown_options_and_presets_are_refused():
    with pytest.raises(ValueError, match="'adv_step'.*did you mean 'adv_steps'"):
        config_from_options("d", "o", adv_step=1)
    with pytest.raises(ValueError, match="unknown training preset 'robust'"):
        TrainConfig.from_preset("robust", "d", "o")


def test_catastrophic_overfitting_is_detected_from_a_collapse():
    steady = [{"train_pgd_accuracy": a} for a in (0.3, 0.35, 0.33)]
    assert not catastrophic_overfitting(steady)
    assert catastrophic_overfitting([*steady, {"train_pgd_accuracy": 0.02}])


def test_bad_adversarial_options_are_refused():
    with pytest.raises(ValueError, match="needs --adv-eps"):
        AdvConfig(method="pgd", eps=0)
    with pytest.raises(ValueError, match="one of"):
        AdvConfig(method="bim", eps=0.1)


def test_adversarial_loss_is_higher_than_clean_and_leaves_the_model_as_found():
    torch.manual_seed(0)
    model = create_model(["a", "b", "c"], arch="test_efficientnet", weights=None, image_size=32).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clean, _ = adversarial_loss(model, model, x, y, AdvConfig(), 0.0, seed=0)
    adv, _ = adversarial_loss(model, model, x, y, AdvConfig(method="pgd", eps=8 / 255), 8 / 255, seed=0)
    assert adv.item() > clean.item()
    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_overfitting_check_batch_survives_unreadable_sampled_images():
    from birdshield.data import DataError
    from birdshield.training.prepare import _overfit_probe

    class ThirdsUnreadable:  # 200 images; the strided sample (every 3rd from 0) hits only unreadable ones
        def __len__(self) -> int:
            return 200

        def __getitem__(self, i: int):
            return None if i % 3 == 0 else (torch.full((3, 8, 8), i / 200), i % 2)

    cfg = config_from_options("d", "o", channels_last=False)
    x, y = _overfit_probe(ThirdsUnreadable(), cfg, torch.device("cpu"))
    assert len(y) == 64 and float(x[0, 0, 0, 0]) == pytest.approx(1 / 200)  # the first readable ones
    with pytest.raises(DataError, match="no readable training image"):
        _overfit_probe([None] * 10, cfg, torch.device("cpu"))


@pytest.mark.parametrize("method", ["none", "pgd", "trades"])
def test_a_teachers_one_hot_predictions_train_as_the_labels_do(method):
    """A teacher's soft targets take the labels' place in every loss: one-hot targets give the same loss."""
    torch.manual_seed(0)
    model = create_model(["a", "b", "c"], arch="test_efficientnet", weights=None, image_size=32).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    cfg = AdvConfig(method=method, eps=0.03 if method != "none" else 0.0, steps=2, clean_weight=0.3)

    def loss_of(soft: torch.Tensor | None = None) -> float:
        return adversarial_loss(model, model, x, y, cfg, cfg.eps, seed=1, soft_targets=soft)[0].item()

    assert loss_of(F.one_hot(y, 3).float()) == pytest.approx(loss_of(), rel=1e-5)
    other = F.one_hot((y + 1) % 3, 3).float()  # a teacher that disagrees with the labels changes the loss
    assert loss_of(other) != pytest.approx(loss_of(), rel=1e-3)


def test_the_teacher_sees_the_students_images_at_its_own_size():
    torch.manual_seed(0)
    model = create_model(["a", "b"], arch="test_efficientnet", weights=None, image_size=32).eval()
    teacher, x = Teacher(model), torch.rand(2, 3, 48, 48)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(teacher(x), model(resized), atol=1e-6)
    assert torch.equal(teacher(resized), model(resized)) and not teacher(x).requires_grad


def test_consistency_loss_adds_disagreement_under_noise_and_nothing_where_copies_agree():
    """Jeong & Shin's loss is cross-entropy + L * KL(mean || copy) + eta * H(mean): the KL term is never
    negative, grows with L where the noisy copies disagree, and vanishes for a model blind to the noise."""
    torch.manual_seed(0)
    model = create_model(["a", "b", "c"], arch="test_efficientnet", weights=None, image_size=32).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])

    def loss_of(net: torch.nn.Module, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = TrainConfig.from_preset("smoothing-0.5", "d", "o", consistency=weight)
        return consistency_loss(net, x, y, cfg, torch.Generator().manual_seed(1))

    (light, logits), (heavy, _) = loss_of(model, 1.0), loss_of(model, 10.0)
    assert logits.shape == (4, 3)
    assert heavy.item() > light.item() > 0  # the same noise: only the KL term's weight differs

    class Blind(torch.nn.Module):  # the same logits whatever the noise: the copies agree exactly
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([0.5, -0.2, 0.1]))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(len(images), 3)

    blind = Blind()
    loss, _ = loss_of(blind, 10.0)
    p = blind.bias.softmax(0)
    smoothing = TrainConfig.from_preset("smoothing-0.5", "d", "o").label_smoothing
    ce = F.cross_entropy(blind.bias.expand(4, 3), y, label_smoothing=smoothing)
    expected = ce + CONSISTENCY_ENTROPY * -(p * p.log()).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
