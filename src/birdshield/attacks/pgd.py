"""Projected Gradient Descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks")."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Attacked, attack_fn, check_norm, generator, get_loss, gradient_attack


@attack_fn
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """Iterated gradient steps projected back onto the eps-ball (Linf or L2) and [0, 1].

    Args:
        eps: radius of the ball; norm: "linf" or "l2".
        steps: gradient steps per restart; step_size: defaults to 2.5 * eps / steps.
        random_start: start from a random point of the ball instead of ``x``.
        restarts: number of runs, each from a new random start; a run only attacks the images that
            no earlier run fooled (those keep their adversarial).
        loss: "ce" (cross-entropy) or "margin" (CW margin, unbounded).
        target: labels to reach (targeted attack); None for untargeted.
        seed: seeds the random starts; early_stop: freeze images as soon as they are fooled.
    Without ``early_stop`` each run returns its final iterate, as classic PGD does.
    """
    return gradient_attack(
        model,
        x,
        y,
        eps=eps,
        norm=check_norm(norm),
        steps=steps,
        step_size=2.5 * eps / steps if step_size is None else step_size,
        loss_fn=get_loss(loss),
        target=target,
        gen=generator(x, seed),
        early_stop=early_stop,
        random_init=random_start,
        restarts=restarts,
    )
