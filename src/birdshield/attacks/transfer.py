"""Transfer (black-box) attack (Papernot et al. 2017; Liu et al. 2017): craft adversarials on a
surrogate model and hand them to the target model, which is never queried."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


def transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    surrogate: nn.Module,
    attack: str | Callable[..., Tensor] = "pgd",
    eps: float,
    **params: Any,
) -> Tensor:
    """Run ``attack`` (a registry name or an attack function) on ``surrogate`` and return its x_adv.

    ``model`` is the target and is not used: the point is to measure what transfers. ``params`` go to
    the attack (``norm``, ``steps``, ``target``, ``seed``, ...). ``early_stop`` defaults to False here,
    because stopping as soon as the surrogate is fooled leaves perturbations that transfer poorly.
    """
    from . import get_attack  # the registry imports this module

    fn = get_attack(attack) if isinstance(attack, str) else attack
    if fn is transfer:
        raise ValueError("transfer cannot craft on a surrogate with itself")
    params.setdefault("early_stop", False)
    return fn(surrogate, x, y, eps=eps, **params)
