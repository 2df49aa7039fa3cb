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
from .config import AdvConfig


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


class Teacher(nn.Module):
    """A trained model, frozen, that takes images of any size to its own: the distillation teacher."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model, self.image_size = model.eval().requires_grad_(False), model.image_size

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.image_size:  # e.g. a 224 px teacher of a 160 px student
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.model(x)


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
