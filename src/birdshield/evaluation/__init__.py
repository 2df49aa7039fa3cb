"""Robustness evaluation: clean, corruption and worst-case adversarial accuracy over an attack ensemble
(``run``, ``cascade``, ``checks``, ``report``), and certified accuracy under randomized smoothing
(``certify``); long runs save their progress and resume (``state``). The configuration (``config``) is
torch-free; the rest loads on first use (PEP 562), so reading the presets does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports
from .config import DEFAULT_L2_EPS as DEFAULT_L2_EPS
from .config import PRESETS as PRESETS
from .config import EvalConfig as EvalConfig

# public name -> module (relative to this package) that defines it
_LAZY = {
    "evaluate": ".run",
    "evaluate_samples": ".run",
    "evaluate_to_dir": ".run",
    "attack_plan": ".cascade",
    "trained_against": ".report",
    "certify_dataset": ".certify",
    "certified_accuracy": ".certify",
    "certify_to_dir": ".certify",
    "prepare_out_dir": ".state",
}
__all__ = sorted(["DEFAULT_L2_EPS", "PRESETS", "EvalConfig", *_LAZY])

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
