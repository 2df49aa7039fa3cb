"""Fast Gradient Sign Method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Attacked, attack_fn, ce_loss, check_norm, generator, gradient_attack


@attack_fn
def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """One gradient step of size ``eps`` on the cross-entropy loss.

    Linf: ``x + eps * sign(grad)``; L2: ``x + eps * grad / ||grad||_2``. Targeted (``target`` given):
    descend the cross-entropy of ``target``. With ``early_stop`` images the model already gets wrong
    (or already assigns to ``target``) are returned unchanged. ``seed`` is unused (no randomness) but
    kept for the common contract.
    """
    return gradient_attack(
        model,
        x,
        y,
        eps=eps,
        norm=check_norm(norm),
        steps=1,
        step_size=eps,
        loss_fn=ce_loss,
        target=target,
        gen=generator(x, seed),
        early_stop=early_stop,
    )
