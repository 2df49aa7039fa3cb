"""Adversarial attacks and common corruptions.

Every attack follows ``attack(model, x, y, *, eps, ..., target=None, seed=0, early_stop=True) -> x_adv``
(see :mod:`birdshield.attacks.base`); :mod:`birdshield.attacks.registry` describes each one and
:data:`ATTACKS` maps the registry names to the functions.

Importing this package is cheap (no torch): the names below are loaded on first use (PEP 562), so the CLI
can read the registry, parse eps and list corruptions before torch is imported.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> module (relative to this package) that defines it
_LAZY = {
    "apgd": ".apgd",
    "apgd_t": ".apgd",
    "cw_l2": ".cw",
    "fgsm": ".fgsm",
    "mifgsm": ".mifgsm",
    "pgd": ".pgd",
    "square": ".square",
    "transfer": ".transfer",
    "AttackResult": ".base",
    "dlr_loss": ".base",
    "margin_loss": ".base",
    "project": ".base",
    "corrupt": ".corruptions",
    "CORRUPTIONS": ".registry",
    "ATTACK_SPECS": ".registry",
    "AttackSpec": ".registry",
    "get_attack": ".registry",
    "get_spec": ".registry",
    "format_eps": ".eps",
    "parse_eps": ".eps",
}
__all__ = sorted([*_LAZY, "ATTACKS"])


def __getattr__(name: str) -> Any:
    if name == "ATTACKS":
        from .registry import ATTACK_SPECS

        value: Any = {n: spec.load() for n, spec in ATTACK_SPECS.items()}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package: keep ``attacks.pgd`` the function
    (as the eager imports used to), whichever of ``attacks.pgd`` and ``attacks.pgd.pgd`` loads first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _LAZY and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
