"""Training: `train(TrainConfig(...))` fine-tunes a classifier, optionally against noise or adversaries.

Importing this package is cheap: the configs are plain Python and the loop (torch) loads on first use.
"""

from __future__ import annotations

from ..lazy import lazy_exports
from .config import (
    FLAT_FIELDS,
    METHODS,
    PRESETS,
    AdvConfig,
    AugmentConfig,
    Preset,
    TrainConfig,
    config_from_options,
    preset_defaults,
)

_LAZY = {"train": ".loop", "fit": ".loop", "prepare": ".prepare", "Run": ".prepare", "TrainState": ".state"}

__all__ = [
    "FLAT_FIELDS",
    "METHODS",
    "PRESETS",
    "AdvConfig",
    "AugmentConfig",
    "Preset",
    "TrainConfig",
    "config_from_options",
    "preset_defaults",
    *_LAZY,
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
