"""Bounded-norm Carlini-Wagner attack (Carlini & Wagner 2017, "Towards Evaluating the Robustness of
Neural Networks"): the CW margin loss optimised by L2 PGD instead of the original penalty search."""

from __future__ import annotations

import functools

from torch import Tensor, nn

from .base import Attacked, attack_fn, generator, gradient_attack, margin_loss


@attack_fn
def cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    step_size: float | None = None,
    kappa: float = 0.0,
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """L2 PGD from ``x`` on the CW margin ``max_{j!=y} z_j - z_y`` capped at ``kappa`` (confidence).

    With kappa = 0 the push stops once the image is misclassified, giving minimal-looking changes
    within the L2 ball of radius ``eps``. ``step_size`` defaults to 2.5 * eps / steps.
    Targeted: maximise ``z_t - max_{j!=t} z_j``. ``seed`` is unused (deterministic start).
    """
    return gradient_attack(
        model,
        x,
        y,
        eps=eps,
        norm="l2",
        steps=steps,
        step_size=2.5 * eps / steps if step_size is None else step_size,
        loss_fn=functools.partial(margin_loss, kappa=kappa),
        target=target,
        gen=generator(x, seed),
        early_stop=early_stop,
    )
