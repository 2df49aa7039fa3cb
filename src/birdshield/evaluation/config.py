"""What an evaluation measures: EvalConfig and its presets. Torch-free: the CLI reads the defaults cheaply."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..attacks.registry import CORRUPTIONS

if TYPE_CHECKING:
    from torch import nn

DEFAULT_L2_EPS = (0.25, 0.5, 1.0)  # used when --norm l2 is asked for without --eps
N_EXAMPLES = 4
ProgressFn = Callable[[str, int, int | None], None]  # (stage, images done, total images or None)


@dataclass(frozen=True)
class EvalConfig:
    """What to measure. ``steps`` maps attack name -> iterations (``default_steps`` for the others)."""

    attacks: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "square")
    eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255)
    norm: str = "linf"
    steps: dict[str, int] = field(default_factory=lambda: {"pgd": 10, "apgd-ce": 20})
    default_steps: int = 10
    restarts: int = 1  # PGD random restarts (APGD keeps one run, as AutoAttack's standard version)
    square_queries: int = 200
    n_target_classes: int = 9  # APGD-T: top wrong classes tried as targets
    n: int | None = None  # seeded, stratified subset of the samples; None = all
    seed: int = 0
    batch_size: int = 32
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = (1, 3, 5)
    noise_std: tuple[float, ...] = (0.05, 0.1, 0.2)  # extra gaussian_noise entries at these explicit stds
    independent: bool = False


@dataclass(frozen=True)
class Models:
    """The models an evaluation runs: the attacked one and its optional companions."""

    model: nn.Module  # attacked (its gradients), and every other pass unless `forward` is given
    # A forward-only twin of `model` (onnxruntime: `evaluate --runtime onnx`) for the passes that need no
    # gradients: clean, corruptions and the black-box attacks' queries.
    forward: nn.Module | None = None
    surrogate: nn.Module | None = None  # crafts the "transfer" attack; None = no transfer attack

    @property
    def forward_only(self) -> nn.Module:
        return self.forward or self.model


# quick: a screen sized for a CPU (early stop makes brittle models cheap; robust ones pay every step).
# full: AutoAttack strength, the numbers to report; meant for a GPU.
PRESETS: dict[str, EvalConfig] = {
    "quick": EvalConfig(),
    "full": EvalConfig(
        attacks=("fgsm", "pgd", "apgd-ce", "apgd-t", "square"),
        eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
        steps={"pgd": 50, "apgd-ce": 100, "apgd-t": 100},
        restarts=5,
        square_queries=5000,
    ),
}


def config_dict(cfg: EvalConfig, models: Models | None = None) -> dict[str, Any]:
    """The config as JSON data, with the companions of `models` named: the surrogate by its architecture,
    the forward-only twin by its type."""
    out: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    sur, fwd = (models.surrogate, models.forward) if models else (None, None)
    out["surrogate"] = None if sur is None else getattr(sur, "meta", {}).get("arch", type(sur).__name__)
    out["forward_model"] = None if fwd is None else type(getattr(fwd, "model", fwd)).__name__  # Defended
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
