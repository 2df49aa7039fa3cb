"""Defences: randomized smoothing (certified) and input transformations with BPDA/EOT for honest attacks.

Cheap to import (no torch until a defence is used): the CLI reads `specs` to build its --help.
Adversarial training lives in `birdshield.training`.
"""

from __future__ import annotations

import math
from typing import Any

from ..lazy import lazy_exports
from .specs import DEFENSES, TRANSFORM_NAMES, SmoothingDefense

_LAZY = {
    "smoothing": ("ABSTAIN", "Smoothed", "certified_radius", "lower_confidence_bound", "required_votes"),
    "transforms": (
        "EOT",
        "JPEG",
        "TRANSFORMS",
        "BitDepth",
        "Defended",
        "InputTransform",
        "MedianFilter",
        "make_transform",
    ),
}


def make_defense(name: str, param: float | None = None, **smoothing: Any) -> Any:
    """The defence called `name` with its one parameter (its default when None): None for "none", an input
    transform for jpeg/bits/median, a `SmoothingDefense` (sigma = param; n, alpha, seed, batch_size from
    `smoothing`) for "smoothing". ValueError for an unknown name or a bad value."""
    if name == "none":
        return None
    if name == "smoothing":
        sigma = DEFENSES["smoothing"][1] if param is None else param
        if not 0 < sigma < math.inf:  # NaN fails this too
            raise ValueError(f"smoothing: sigma must be > 0, got {sigma}")
        defense = SmoothingDefense(sigma=sigma, **smoothing)
        if defense.n < 1 or not 0 < defense.alpha < 1:
            raise ValueError(
                f"smoothing needs n >= 1 and alpha in (0, 1), got n={defense.n}, alpha={defense.alpha}"
            )
        return defense
    from .transforms import make_transform

    return make_transform(name, param)


__all__ = [
    "DEFENSES",
    "TRANSFORM_NAMES",
    "SmoothingDefense",
    "make_defense",
    *(n for v in _LAZY.values() for n in v),
]

__getattr__, __dir__ = lazy_exports(__name__, {n: f".{m}" for m, names in _LAZY.items() for n in names})
