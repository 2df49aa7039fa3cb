"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing"): PREDICT with abstention and CERTIFY with a Clopper-Pearson bound, plus a dataset report.

The smoothed classifier is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I). If the top class has
probability pA >= pA_lower > 1/2, g is constant within the L2 ball of radius sigma * Phi^-1(pA_lower).

Units: noise and radii are in pixel units of [0,1] images (normalisation is inside the model), measured on
the model's input tensor (image_size x image_size after resizing), not on the original file.

Noise is added without clipping to [0,1]: Cohen et al. certify the pure Gaussian model, and so do we.
(Clipping would still give a valid certificate, being part of the base classifier f, but birdshield keeps
the textbook setting.) `train --noise-sigma` (and `--preset smoothing`) adds the same unclipped noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import data
from ..attacks.base import generator
from ..runtime import atomic_write_bytes, atomic_write_json, model_device, progress

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)


# ------------------------------------------------------------------------------------------ statistics
# scipy.stats is imported inside the functions: it costs ~0.6 s, which every other command would pay.


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from n_a of n successes."""
    from scipy.stats import beta

    if not 0 <= n_a <= n or n < 1:
        raise ValueError(f"need 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(p_lower: float, sigma: float) -> float | None:
    """sigma * Phi^-1(pA_lower), or None (abstain) when pA_lower < 1/2."""
    from scipy.stats import norm

    return None if p_lower < 0.5 else sigma * float(norm.ppf(p_lower))


def _top2_significant(counts: Tensor, alpha: float) -> bool:
    """PREDICT's test: is the top class's share of the top-2 votes significantly above 1/2 (two-sided)?"""
    from scipy.stats import binomtest

    top2 = counts.topk(min(2, counts.numel())).values.tolist() + [0]
    n_a, n_b = int(top2[0]), int(top2[1])
    return binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha


# ------------------------------------------------------------------------------------------ classifier


class Smoothed:
    """The smoothed version of a classifier `model` ([0,1] images in, logits out) at noise level `sigma`.

    Noise samples of one image are drawn in batches of `batch_size` (one forward per batch) from a local,
    seeded generator, so results are reproducible and the global RNG is untouched.
    """

    def __init__(self, model: nn.Module, sigma: float, batch_size: int = 100) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.sigma, self.batch_size = model, float(sigma), int(batch_size)
        names = getattr(model, "class_names", None)
        self.num_classes: int | None = len(names) if names else None  # else learnt from the first logits

    def _votes(self, x: Tensor, sizes: Sequence[int], gen: torch.Generator) -> list[Tensor]:
        """Votes of the base model on x + noise: one count vector per size, each from its own fresh draws.

        Drawing all sizes in one stream lets CERTIFY's n0 and n samples share forward batches.
        """
        total = sum(sizes)
        preds = torch.empty(total, dtype=torch.long, device=x.device)
        c, h, w = x.shape
        with torch.inference_mode():
            for start in range(0, total, self.batch_size):
                b = min(self.batch_size, total - start)
                # drawn as NHWC and viewed as NCHW: a channels_last batch without a copy (faster convs)
                noise = torch.randn((b, h, w, c), generator=gen, device=x.device, dtype=x.dtype)
                batch = noise.permute(0, 3, 1, 2).mul_(self.sigma).add_(x)
                logits = self.model(batch)
                self.num_classes = self.num_classes or logits.shape[1]
                preds[start : start + b] = logits.argmax(1)
        splits = preds.split(list(sizes))
        return [torch.bincount(p, minlength=self.num_classes or 1).cpu() for p in splits]

    def predict(self, x: Tensor, n: int, alpha: float, seed: int = 0) -> tuple[Tensor, Tensor]:
        """PREDICT for a batch (N, 3, H, W): (classes with ABSTAIN = -1, vote counts (N, classes)).

        A class is returned only when a two-sided binomial test on the top-2 counts rejects a tie at level
        alpha, so the answer differs from g(x) with probability at most alpha.
        """
        _check(n=n, alpha=alpha)
        gen = generator(x, seed)
        counts = torch.stack([self._votes(img, [n], gen)[0] for img in x])
        classes = [int(c.argmax()) if _top2_significant(c, alpha) else ABSTAIN for c in counts]
        return torch.tensor(classes, dtype=torch.long), counts

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, seed: int = 0) -> tuple[Tensor, Tensor]:
        """CERTIFY for a batch (N, 3, H, W): (classes with ABSTAIN = -1, L2 radii; NaN where abstained).

        n0 samples pick the candidate class, n fresh samples bound its probability from below.
        """
        _check(n=n, alpha=alpha, n0=n0)
        gen = generator(x, seed)
        classes, radii = [], []
        for img in x:
            counts0, counts = self._votes(img, [n0, n], gen)
            c_a = int(counts0.argmax())
            radius = certified_radius(lower_confidence_bound(int(counts[c_a]), n, alpha), self.sigma)
            classes.append(ABSTAIN if radius is None else c_a)
            radii.append(math.nan if radius is None else radius)
        return torch.tensor(classes, dtype=torch.long), torch.tensor(radii, dtype=torch.float64)


def _check(*, n: int, alpha: float, n0: int = 1) -> None:
    if n < 1 or n0 < 1:
        raise ValueError(f"need n >= 1 and n0 >= 1 noise samples, got n={n}, n0={n0}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# ------------------------------------------------------------------------------------------ datasets


def certified_accuracy(images: Sequence[dict], radii: Sequence[float]) -> list[dict[str, float]]:
    """Fraction of (readable) images classified correctly with a certified radius >= r, for each r."""
    ok = [im for im in images if not im.get("error")]
    good = [im["radius"] for im in ok if im["correct"]]
    total = max(1, len(ok))
    return [{"radius": r, "accuracy": sum(g >= r for g in good) / total} for r in radii]


def _radius_grid(images: Sequence[dict]) -> list[float]:
    """DEFAULT_RADII, more 0.25 steps past the largest radius, and every radius where the curve drops."""
    seen = [im["radius"] for im in images if im.get("correct")]
    grid = set(DEFAULT_RADII) | set(seen)
    top = max([*seen, DEFAULT_RADII[-1]])
    grid |= {0.25 * k for k in range(1, int(top / 0.25) + 2)}
    return sorted(grid)


def _certify_one(
    smoothed: Smoothed, sample: data.Sample, size: int, device: torch.device, args: dict[str, Any]
) -> dict[str, Any]:
    record: dict[str, Any] = {"image": str(sample.path), "label": sample.label}
    try:
        x = data.to_tensor(data.read_rgb(sample.path), size)[None].to(device)
    except data.BadImageError as e:
        return {**record, "prediction": None, "correct": False, "radius": None, "error": e.reason}
    start = time.perf_counter()
    classes, radii = smoothed.certify(x, **args)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        base = int(smoothed.model(x).argmax(1))
    cls = int(classes[0])
    radius = None if cls == ABSTAIN else round(float(radii[0]), 6)
    return {
        **record,
        "prediction": cls,
        "correct": cls == sample.label,
        "radius": radius,
        "base_correct": base == sample.label,
        "seconds": round(seconds, 4),
    }


def certify_dataset(
    model: nn.Module,
    samples: Sequence[data.Sample],
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 100,
) -> dict[str, Any]:
    """CERTIFY every sample; per-image records plus certified accuracy against the radius.

    Each image's noise is seeded with seed + its index, so a record does not depend on the other images.
    Unreadable images are listed with their error and left out of the accuracies.
    """
    smoothed = Smoothed(model, sigma, batch_size)
    device = next(model.parameters()).device
    names = list(model.class_names)
    images = []
    for i, sample in enumerate(progress(samples, desc="certify", unit="img")):
        args = {"n0": n0, "n": n, "alpha": alpha, "seed": seed + i}
        record = _certify_one(smoothed, sample, model.image_size, device, args)
        record["label"] = names[record["label"]]
        if record["prediction"] is not None:
            record["prediction"] = None if record["prediction"] == ABSTAIN else names[record["prediction"]]
        images.append(record)
    return _summary(images, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed)


def _summary(images: list[dict], **params: Any) -> dict[str, Any]:
    ok = [im for im in images if not im.get("error")]
    seconds = sum(im["seconds"] for im in ok)
    count = max(1, len(ok))
    return {
        **params,
        "radius_units": "L2 norm in pixel units of [0,1] images, on the model's input size",
        "n_images": len(ok),
        "n_unreadable": len(images) - len(ok),
        "abstain_rate": sum(im["prediction"] is None for im in ok) / count,
        "clean_accuracy_of_base_model": sum(im["base_correct"] for im in ok) / count,
        "seconds_per_image": seconds / count,
        "images_per_second": len(ok) / seconds if seconds else None,
        "certified_accuracy": certified_accuracy(images, _radius_grid(images)),
        "images": images,
    }


# ------------------------------------------------------------------------------------------ reports


def format_table(result: dict[str, Any]) -> str:
    """Markdown: parameters and certified accuracy at the standard radii."""
    curve = {row["radius"]: row["accuracy"] for row in result["certified_accuracy"]}
    lines = [
        f"Randomized smoothing: sigma={result['sigma']}, n0={result['n0']}, n={result['n']}, "
        f"alpha={result['alpha']}, {result['n_images']} images "
        f"({result['n_unreadable']} unreadable skipped)",
        "",
        f"- base model clean accuracy: {100 * result['clean_accuracy_of_base_model']:.1f}%",
        f"- abstained: {100 * result['abstain_rate']:.1f}%",
        f"- time: {result['seconds_per_image']:.3f} s per image",
        "",
        "| L2 radius | certified accuracy |",
        "|---:|---:|",
    ]
    lines += [f"| {r:.3f} | {100 * curve[r]:.1f}% |" for r in DEFAULT_RADII]
    return "\n".join(lines) + "\n"


def plot_certified(result: dict[str, Any], path: Path) -> None:
    """Certified accuracy vs L2 radius as a step curve (no pyplot: no global figure state)."""
    from matplotlib.figure import Figure

    curve = result["certified_accuracy"]
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    radii = [row["radius"] for row in curve]
    ax.plot(radii, [100 * row["accuracy"] for row in curve], drawstyle="steps-pre")
    ax.set(
        xlabel="L2 radius (pixel units of [0,1] images)",
        ylabel="certified accuracy (%)",
        title=f"Randomized smoothing, sigma = {result['sigma']}",
        ylim=(0, 100),
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def write_report(result: dict[str, Any], out: Path) -> str:
    """certify.json, certify.md and certified_accuracy.png in `out`; returns the Markdown table."""
    out = Path(out)
    table = format_table(result)
    atomic_write_json(out / "certify.json", result)
    atomic_write_bytes(out / "certify.md", table.encode())
    plot_certified(result, out / "certified_accuracy.png")
    return table


# ------------------------------------------------------------------------------------------ prediction

ABSTAIN_NAME = "ABSTAIN"


def predict_rows(
    smoothed: Smoothed, paths: Sequence[Path], *, n: int, alpha: float, top_k: int = 1, seed: int = 0
) -> list[dict]:
    """Rows in `birdshield.predict`'s format ({"image", "top", "error"}) from the smoothed classifier.

    Confidences are shares of the n noisy votes. An abstention is the species "ABSTAIN" with no confidence,
    followed by the classes ranked by votes (so the leading class is still visible with top_k >= 2).
    """
    model = smoothed.model
    device = model_device(model)
    rows = []
    for i, path in enumerate(progress(paths, desc="predict", unit="img")):
        try:
            x = data.to_tensor(data.read_rgb(path), model.image_size)[None].to(device)
        except data.BadImageError as e:
            rows.append({"image": str(path), "top": [], "error": e.reason})
            continue
        classes, counts = smoothed.predict(x, n, alpha, seed=seed + i)
        share, idx = (counts[0].double() / n).topk(min(top_k, counts.shape[1]))
        top = [(model.class_names[j], p) for j, p in zip(idx.tolist(), share.tolist(), strict=True)]
        if int(classes[0]) == ABSTAIN:
            top = [(ABSTAIN_NAME, None), *top][:top_k]
        rows.append({"image": str(path), "top": top, "error": ""})
    return rows
