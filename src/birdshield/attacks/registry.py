"""What each attack is and can do: the one place that evaluate, attack, --help and the reports read.

Torch-free on purpose: the CLI builds its --help from here, so an attack's function is imported only when
:meth:`AttackSpec.load` is called. Corruption names live here for the same reason.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Every option an attack may take, as the evaluation and the `attack` command name them.
OPTIONS = frozenset(
    {
        "steps",
        "restarts",
        "n_queries",
        "n_target_classes",
        "surrogate",
        "norm",
        "early_stop",
        "target",
        "seed",
    }
)
_GRADIENT = frozenset({"norm", "steps", "target", "seed", "early_stop"})  # the usual white-box options

# Names of birdshield.attacks.corruptions' functions (tests check the two agree).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "salt_pepper",
    "gaussian_blur",
    "jpeg",
    "brightness",
    "contrast",
)


@dataclass(frozen=True)
class AttackSpec:
    """An attack's capabilities. ``target`` is "module:function" (module relative to this package);
    ``fixed`` are keyword arguments bound to the function (e.g. APGD's loss)."""

    name: str
    summary: str  # one line, for --help and reports
    norms: tuple[str, ...]
    black_box: bool  # reads only the model's outputs (or never queries it)
    targeted: bool  # accepts target=
    needs_gradients: bool  # of the attacked model
    min_classes: int
    options: frozenset[str]  # which of OPTIONS it takes
    default_steps: int | None  # its own default iterations; None when it takes no steps
    target: str
    fixed: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Callable[..., Any]:
        """The attack callable (imports torch and the attack's module on first use)."""
        return _resolve(self.target, self.fixed)

    def kwargs(self, eps: float, **options: Any) -> dict[str, Any]:
        """Keyword arguments for this attack: eps plus those ``options`` it takes (None = its default)."""
        return {"eps": eps} | {k: v for k, v in options.items() if k in self.options and v is not None}


@functools.cache
def _resolve(target: str, fixed: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module, __package__), attr)
    return functools.partial(fn, **dict(fixed)) if fixed else fn


def _spec(name: str, summary: str, target: str, options: frozenset[str], **kw: Any) -> AttackSpec:
    defaults: dict[str, Any] = {"norms": ("linf", "l2"), "black_box": False, "needs_gradients": True}
    defaults |= {"min_classes": 2, "default_steps": None}
    targeted = "target" in options
    return AttackSpec(name, summary, target=target, options=options, targeted=targeted, **(defaults | kw))


ATTACK_SPECS: dict[str, AttackSpec] = {
    s.name: s
    for s in (
        _spec("fgsm", "one gradient step of size eps (FGSM)", ".fgsm:fgsm", _GRADIENT - {"steps"}),
        _spec(
            "pgd",
            "projected gradient steps from a random start, with restarts (PGD)",
            ".pgd:pgd",
            _GRADIENT | {"restarts"},
            default_steps=10,
        ),
        _spec(
            "mifgsm",
            "iterative FGSM with momentum, transfers well (MI-FGSM)",
            ".mifgsm:mifgsm",
            _GRADIENT,
            default_steps=10,
        ),
        _spec(
            "apgd-ce",
            "step-size-free PGD on cross-entropy (AutoAttack's APGD-CE)",
            ".apgd:apgd",
            _GRADIENT | {"restarts"},
            default_steps=100,
            fixed=(("loss", "ce"),),
        ),
        _spec(
            "apgd-t",
            "targeted-DLR APGD against the top wrong classes in turn (AutoAttack's APGD-T)",
            ".apgd:apgd_t",
            (_GRADIENT - {"target"}) | {"n_target_classes"},
            default_steps=100,
            min_classes=4,
        ),
        _spec(
            "apgd-dlr",
            "APGD on the scale-free DLR loss",
            ".apgd:apgd",
            _GRADIENT | {"restarts"},
            default_steps=100,
            min_classes=3,
            fixed=(("loss", "dlr"),),
        ),
        _spec(
            "cw",
            "the Carlini-Wagner margin loss by L2 PGD, L2 only",
            ".cw:cw_l2",
            _GRADIENT - {"norm"},
            norms=("l2",),
            default_steps=100,
        ),
        _spec(
            "square",
            "score-based random search, no gradients, Linf only (black box)",
            ".square:square",
            frozenset({"n_queries", "target", "seed", "early_stop"}),
            norms=("linf",),
            black_box=True,
            needs_gradients=False,
        ),
        _spec(
            "transfer",
            "PGD crafted on a surrogate model; the target is never queried (black box)",
            ".transfer:transfer",
            frozenset({"surrogate", "norm", "steps", "target", "seed"}),
            black_box=True,
            needs_gradients=False,
            default_steps=10,
        ),
    )
}


def get_spec(name: str) -> AttackSpec:
    """The spec registered under ``name``; ValueError naming the valid ones otherwise."""
    try:
        return ATTACK_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACK_SPECS)}") from None


def get_attack(name: str) -> Callable[..., Any]:
    """The attack function registered under ``name``; ValueError naming the valid ones otherwise."""
    return get_spec(name).load()
