"""Transfer (black-box) attack (Papernot et al. 2017; Liu et al. 2017): craft adversarials on a
surrogate model and hand them to the target model, which is never queried."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .base import AttackResult, evaluated
from .registry import get_attack


def transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    surrogate: nn.Module,
    attack: str | Callable[..., Tensor] = "pgd",
    eps: float,
    return_result: bool = False,
    **params: Any,
) -> Tensor | AttackResult:
    """Run ``attack`` (a registry name or an attack function) on ``surrogate`` and return its x_adv.

    ``model`` is the target and is not used: the point is to measure what transfers. ``params`` go to
    the attack (``norm``, ``steps``, ``target``, ``seed``, ...). ``early_stop`` defaults to False here,
    because stopping as soon as the surrogate is fooled leaves perturbations that transfer poorly.
    ``return_result=True`` queries ``model`` once, for the AttackResult's logits.
    """
    fn = get_attack(attack) if isinstance(attack, str) else attack
    if fn is transfer:
        raise ValueError("transfer cannot craft on a surrogate with itself")
    params.setdefault("early_stop", False)
    x_adv = fn(surrogate, x, y, eps=eps, **params)
    if not return_result:
        return x_adv
    return evaluated(model, x_adv, y, params.get("target"), int(params.get("seed", 0)))
