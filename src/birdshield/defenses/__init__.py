"""Defences: randomized smoothing (certified), input transformations with BPDA/EOT for honest attacks, and
adversarial-training losses (`defenses.adversarial`, used by train)."""

from __future__ import annotations

from .smoothing import (
    ABSTAIN,
    Smoothed,
    certified_radius,
    lower_confidence_bound,
)
from .transforms import (
    DEFENSE_PARAMS,
    EOT,
    JPEG,
    TRANSFORMS,
    BitDepth,
    Defended,
    InputTransform,
    MedianFilter,
    make_transform,
)

__all__ = [
    "ABSTAIN",
    "DEFENSE_PARAMS",
    "EOT",
    "JPEG",
    "TRANSFORMS",
    "BitDepth",
    "Defended",
    "InputTransform",
    "MedianFilter",
    "Smoothed",
    "certified_radius",
    "lower_confidence_bound",
    "make_transform",
]
