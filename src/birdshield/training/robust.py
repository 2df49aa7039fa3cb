"""Adversarial training losses: PGD (Madry et al. 2018), fast FGSM from a random start (Wong et al. 2020)
and TRADES (Zhang et al. 2019), with eps warm-up, a clean/adversarial mix and a check for catastrophic
overfitting. Adversarial examples are crafted with birdshield's own attacks, so the training threat model
and the evaluation threat model are the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import pgd
from ..attacks.base import project, sealed
from ..models import Classifier
from .config import AdvConfig, TrainConfig


def _trades_example(
    model: nn.Module, x: Tensor, eps: float, steps: int, step_size: float, seed: int
) -> Tensor:
    """Maximise KL(p(x) || p(x_adv)) inside the Linf ball, from a tiny random start."""
    with sealed(model, seed, x.device), torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with sealed(model, seed, x.device), torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps, "linf")
    return x_adv.detach()


def adversarial_loss(
    net: nn.Module,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AdvConfig,
    eps: float,
    seed: int,
    label_smoothing: float = 0.0,
    soft_targets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(training loss, logits the accuracy is counted on) for one batch.

    `model` crafts the examples (never the DDP wrapper, whose hooks expect a parameter backward);
    `net` computes the loss that is optimised. `soft_targets` (a teacher's class probabilities on the
    clean images) replace the labels in the loss: distillation, as in ARD (Goldblum et al. 2020); the
    examples are still crafted against the labels.
    """
    target = y if soft_targets is None else soft_targets

    def loss_on(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    if eps <= 0 or not cfg.active:
        logits = net(x)
        return loss_on(logits), logits
    if cfg.method == "trades":
        x_adv = _trades_example(model, x, eps, cfg.steps, cfg.step_size or eps / 2, seed)
        logits_clean, logits_adv = net(torch.cat([x, x_adv])).chunk(2)
        robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean")
        return loss_on(logits_clean) + cfg.trades_beta * robust, logits_adv
    steps, step = (
        (1, cfg.step_size or 1.25 * eps) if cfg.method == "fgsm" else (cfg.steps, cfg.step_size or eps / 2)
    )
    x_adv = pgd(
        model, x, y, eps=eps, steps=steps, step_size=step, random_start=True, early_stop=False, seed=seed
    )
    if cfg.clean_weight <= 0:
        logits = net(x_adv)
        return loss_on(logits), logits
    logits_clean, logits = net(torch.cat([x, x_adv])).chunk(2)
    return (1 - cfg.clean_weight) * loss_on(logits) + cfg.clean_weight * loss_on(logits_clean), logits


CONSISTENCY_COPIES = 2  # noisy copies of each image (Jeong & Shin's m)
CONSISTENCY_ENTROPY = 0.5  # weight of the entropy of the mean prediction (their eta)


def consistency_loss(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    soft_targets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gaussian-noise training with consistency regularisation (Jeong & Shin 2020, "Consistency
    Regularization for Certified Robustness of Smoothed Classifiers"): cross-entropy on two noisy copies of
    each image (std ``cfg.augment.noise_sigma``, unclipped, as smoothing adds it) plus ``cfg.consistency``
    times the KL divergence of each copy's prediction from their mean, plus half the mean's entropy.
    Agreeing under noise is what raises the smoothed classifier's top-class probability, and so the
    certified radius. Returns (loss, logits of the first copies)."""
    sigma, copies = cfg.augment.noise_sigma, CONSISTENCY_COPIES
    noise = torch.randn((copies, *x.shape), generator=gen, device=x.device, dtype=x.dtype) * sigma
    logits = net((x.unsqueeze(0) + noise).flatten(0, 1))
    target = y.repeat(copies) if soft_targets is None else soft_targets.repeat(copies, 1)
    ce = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
    log_p = logits.float().log_softmax(1).unflatten(0, (copies, -1))  # (copies, N, classes)
    mean = log_p.exp().mean(0)
    log_mean = mean.clamp_min(1e-12).log()
    kl = (mean * (log_mean - log_p)).sum(-1).mean()  # KL(mean || copy), averaged over copies and images
    entropy = -(mean * log_mean).sum(-1).mean()
    return ce + cfg.consistency * kl + CONSISTENCY_ENTROPY * entropy, logits[: len(y)]


def resized(x: Tensor, size: int) -> Tensor:
    """Images resized to `size` x `size` (unchanged when they are), differentiably: e.g. a 224 px teacher's
    input from a 160 px student's. Antialiased bilinear averages neighbouring pixels, so an Linf
    perturbation stays inside its ball."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Teacher(nn.Module):
    """A trained model, frozen, that takes images of any size to its own: the distillation teacher."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model, self.image_size = model.eval().requires_grad_(False), model.image_size

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.model(resized(x, self.image_size))


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, seed: int = 0) -> float:
    """PGD accuracy of a batch: the cheap robust validation metric and the catastrophic-overfitting probe."""
    x_adv = pgd(model, x, y, eps=eps, steps=steps, seed=seed)
    with torch.inference_mode():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def catastrophic_overfitting(history: list[dict], drop: float = 0.2) -> bool:
    """Catastrophic overfitting of fast adversarial training: PGD accuracy on a fixed training batch falls
    by more than `drop` below its best so far, while the FGSM training accuracy keeps rising."""
    pgd_acc = [h["train_pgd_accuracy"] for h in history if "train_pgd_accuracy" in h]
    return len(pgd_acc) >= 2 and pgd_acc[-1] < max(pgd_acc[:-1]) - drop
