"""Adversarial attacks and common corruptions.

Every attack follows ``attack(model, x, y, *, eps, ..., target=None, seed=0, early_stop=True) -> x_adv``
(see :mod:`birdshield.attacks.base`); :data:`ATTACKS` maps CLI names to them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from .apgd import apgd, apgd_t
from .base import dlr_loss, format_eps, margin_loss, parse_eps, project
from .corruptions import CORRUPTIONS, corrupt
from .cw import cw_l2
from .fgsm import fgsm
from .mifgsm import mifgsm
from .pgd import pgd
from .square import square
from .transfer import transfer

ATTACKS: dict[str, Callable[..., Tensor]] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "apgd-ce": functools.partial(apgd, loss="ce"),
    "apgd-t": apgd_t,
    "apgd-dlr": functools.partial(apgd, loss="dlr"),
    "cw": cw_l2,
    "square": square,
    "transfer": transfer,
}


def get_attack(name: str) -> Callable[..., Tensor]:
    """The attack registered under ``name``; ValueError naming the valid ones otherwise."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}") from None


__all__ = [
    "ATTACKS",
    "CORRUPTIONS",
    "apgd",
    "apgd_t",
    "corrupt",
    "cw_l2",
    "dlr_loss",
    "fgsm",
    "format_eps",
    "get_attack",
    "margin_loss",
    "mifgsm",
    "parse_eps",
    "pgd",
    "project",
    "square",
    "transfer",
]
