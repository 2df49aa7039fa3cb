"""Training: `train(TrainConfig(...))` fine-tunes a classifier, optionally against noise or adversaries.

Importing this package is cheap: the configs are plain Python and the loop (torch) loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

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

_LAZY = {"train": "loop", "TrainState": "loop"}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
