"""Defences: randomized smoothing (certified) and input transformations with BPDA/EOT for honest attacks.
Adversarial training lives in `birdshield.training` (robust.py)."""

from __future__ import annotations

from .smoothing import (
    ABSTAIN,
    Smoothed,
    certified_accuracy,
    certified_radius,
    certify_dataset,
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
    "certified_accuracy",
    "certified_radius",
    "certify_dataset",
    "lower_confidence_bound",
    "make_transform",
]
