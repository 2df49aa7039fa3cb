"""Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum")."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Attacked, attack_fn, ce_loss, check_norm, generator, gradient_attack


@attack_fn
def mifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """Iterative FGSM whose step follows ``g = decay * g + grad / ||grad||_1`` from ``x``.

    The momentum stabilises the direction, which helps the examples transfer to other models.
    ``step_size`` defaults to eps / steps (the paper's alpha = eps / T); ``norm`` is "linf" (sign step)
    or "l2" (unit-L2 step). ``seed`` is unused (no randomness) but kept for the common contract.
    """
    return gradient_attack(
        model,
        x,
        y,
        eps=eps,
        norm=check_norm(norm),
        steps=steps,
        step_size=eps / steps if step_size is None else step_size,
        loss_fn=ce_loss,
        target=target,
        gen=generator(x, seed),
        early_stop=early_stop,
        momentum=decay,
    )
