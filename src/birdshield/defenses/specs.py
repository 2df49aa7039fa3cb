"""What each defence is called and takes, readable without torch (the CLI builds its --help from it)."""

from __future__ import annotations

from dataclasses import dataclass

# name -> (its one parameter, default, what it does)
DEFENSES: dict[str, tuple[str, float, str]] = {
    "jpeg": ("quality", 75, "JPEG re-compression"),
    "bits": ("bits", 4, "bit-depth reduction"),
    "median": ("kernel", 3, "median filter"),
    "smoothing": ("sigma", 0.25, "randomized smoothing, a vote over noisy copies that may abstain"),
}
TRANSFORM_NAMES: tuple[str, ...] = ("jpeg", "bits", "median")


@dataclass(frozen=True)
class SmoothingDefense:
    """Randomized smoothing as a prediction-time defence: a vote over `n` Gaussian-noise copies of std
    `sigma` that abstains when the vote is not significant at `alpha`."""

    sigma: float = 0.25
    n: int = 100
    alpha: float = 0.001
    seed: int = 0
    batch_size: int = 100


def defense_help(names: tuple[str, ...] | list[str]) -> str:
    """'jpeg: JPEG re-compression (quality, default 75); ...' for the names given."""
    return "; ".join(f"{n}: {DEFENSES[n][2]} ({DEFENSES[n][0]}, default {DEFENSES[n][1]:g})" for n in names)
