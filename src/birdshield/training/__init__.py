"""Training: `train(TrainConfig(...))` fine-tunes a classifier, optionally against noise or adversaries.

Importing this package is cheap: the configs are plain Python and the loop (torch) loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import METHODS, PRESETS, AdvConfig, AugmentConfig, TrainConfig

_LAZY = {"train": "loop", "TrainState": "loop"}

__all__ = ["METHODS", "PRESETS", "AdvConfig", "AugmentConfig", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
