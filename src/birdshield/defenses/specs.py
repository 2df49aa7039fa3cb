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
# The largest median kernel: a k x k median unfolds k*k copies of the image (3*H*W*k^2 floats, 135 MB for
# one 224 px image at 15), so this bound is a memory bound too; larger kernels only blur the bird away.
MAX_MEDIAN_KERNEL = 15
# name -> (lowest, highest) value of each input transform's parameter; the transforms refuse the rest.
PARAM_RANGES: dict[str, tuple[int, int]] = {
    "jpeg": (1, 95),
    "bits": (1, 16),
    "median": (1, MAX_MEDIAN_KERNEL),
}


@dataclass(frozen=True)
class SmoothingDefense:
    """Randomized smoothing as a prediction-time defence: a vote over `n` Gaussian-noise copies of std
    `sigma` that abstains when the vote is not significant at `alpha`."""

    sigma: float = 0.25
    n: int = 100
    alpha: float = 0.001
    seed: int = 0
    batch_size: int = 100


def param_text(name: str) -> str:
    """'quality 1..95' (the transform's parameter and its range), or just the parameter's name."""
    low_high = PARAM_RANGES.get(name)
    odd = ", odd" if name == "median" else ""
    return f"{DEFENSES[name][0]} {low_high[0]}..{low_high[1]}{odd}" if low_high else DEFENSES[name][0]


def defense_help(names: tuple[str, ...] | list[str]) -> str:
    """'jpeg: JPEG re-compression (quality 1..95, default 75); ...' for the names given."""
    return "; ".join(f"{n}: {DEFENSES[n][2]} ({param_text(n)}, default {DEFENSES[n][1]:g})" for n in names)
