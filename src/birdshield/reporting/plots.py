"""Every plot birdshield writes, in one style: the same dpi, font sizes and grid; written atomically as PNG.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot, so no global figure state or backend).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from math import nan
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from ..attacks.eps import format_eps
from ..runtime import atomic_write_bytes
from ..stats import ci95_of

DPI = 100
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


@contextmanager
def _figure(
    path: str | Path, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, squeeze: bool = True
) -> Iterator[Any]:
    """Yield the axes of a new figure in the house style (as ``Figure.subplots`` returns them); on leaving
    the block, lay it out and save it to ``path``."""
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=figsize)
        yield fig.subplots(nrows, ncols, squeeze=squeeze)
        fig.tight_layout()
        _save(fig, path)


def _save(fig: Figure, path: str | Path) -> None:
    """PNG bytes written atomically: a kill mid-write never leaves a truncated image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buf.getvalue())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _yerr(points: list[tuple[float, list[float]]]) -> list[list[float]]:
    """matplotlib's asymmetric error bars, in percent, from (accuracy, [low, high]) pairs."""
    return [[100 * (a - lo) for a, (lo, _) in points], [100 * (hi - a) for a, (_, hi) in points]]


def plot_training_curves(history: list[dict], path: str | Path) -> None:
    """Accuracy and loss per epoch, train vs valid (plus the robust metrics when the run records them).

    Under adversarial training, the train curves are measured on the adversarial training examples.
    """
    epochs = [h["epoch"] for h in history]
    with _figure(path, (10, 4), 1, 2) as (ax_acc, ax_loss):
        for split in ("train", "valid"):
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        for key, label, marker in (
            ("train_accuracy", "train", "o"),
            ("valid_accuracy", "valid", "o"),
            ("valid_robust_accuracy", "valid, PGD", "s"),
            ("train_pgd_accuracy", "train batch, PGD", "s"),
        ):
            if key not in history[-1]:
                continue
            ys = [100 * h.get(key, nan) for h in history]
            (line,) = ax_acc.plot(epochs, ys, marker=marker, label=label)
            if all(f"{key}_ci95_low" in h for h in history):  # the 95% interval as a band (older runs: none)
                low, high = ([100 * h[f"{key}_ci95_{end}"] for h in history] for end in ("low", "high"))
                ax_acc.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (bands: 95% interval)")
        ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
        ax_acc.legend()
        ax_loss.legend()


def plot_accuracy_vs_eps(report: dict[str, Any], path: str | Path) -> None:
    """Accuracy vs eps: each attack (thin), the ensemble (thick), clean accuracy as a dashed line."""
    norm = report["ensemble"][0]["norm"]
    scale = 255 if norm == "linf" else 1  # Linf eps read in grey levels
    eps = [e["eps"] * scale for e in report["ensemble"]]
    mode = "each attack alone" if report["config"].get("independent") else "cascade: attacks cumulative"
    unit = " x 1/255" if scale == 255 else ""
    with _figure(path, (6, 4)) as ax:
        for attack in dict.fromkeys(r["attack"] for r in report["results"]):
            ys = [100 * r["robust_accuracy"] for r in report["results"] if r["attack"] == attack]
            ax.plot(eps, ys, marker=".", alpha=0.7, label=attack)
        n = report["n"]
        ens = [
            (e["robust_accuracy"], e.get("ci95") or ci95_of(e["robust_accuracy"], n))
            for e in report["ensemble"]
        ]
        ax.errorbar(
            eps,
            [100 * a for a, _ in ens],
            yerr=_yerr(ens),
            fmt="k-o",
            lw=2.5,
            capsize=3,
            label="ensemble (95% CI)",
        )
        clean = report["clean_accuracy"]
        low, high = report.get("clean_ci95") or ci95_of(clean, n)
        ax.axhline(100 * clean, color="grey", ls="--", label=f"clean (n={n})")
        ax.axhspan(100 * low, 100 * high, color="grey", alpha=0.15)
        ax.set(
            xlabel=f"eps ({norm}{unit})",
            ylabel="accuracy (%)",
            ylim=(-2, 102),
            title=f"Robust accuracy ({mode})",
        )
        ax.legend()


def plot_examples(examples: list[dict[str, Any]], path: str | Path) -> None:
    """Per example: original, perturbation (scaled to full contrast so it is visible), adversarial image."""
    with _figure(path, (9, 3.2 * len(examples)), len(examples), 3, squeeze=False) as axes:
        for row, ex in zip(axes, examples, strict=True):
            delta = ex["x_adv"] - ex["x"]
            scale = float(delta.abs().max()) or 1.0
            images = [ex["x"], delta / (2 * scale) + 0.5, ex["x_adv"]]
            titles = [
                f"{ex['clean'][0]} ({_pct(ex['clean'][1])})\ntrue: {ex['label']}",
                f"perturbation x{0.5 / scale:.0f}\neps {format_eps(ex['eps'])}",
                f"{ex['adv'][0]} ({_pct(ex['adv'][1])})\nadversarial"
                + ("" if ex["adv"][0] != ex["label"] else " (not fooled)"),
            ]
            for ax, img, title in zip(row, images, titles, strict=True):
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_title(title)
                ax.axis("off")


def plot_certified(result: dict[str, Any], path: str | Path) -> None:
    """Certified accuracy vs L2 radius as a step curve."""
    curve = result["certified_accuracy"]
    with _figure(path, (5, 4)) as ax:
        radii = [row["radius"] for row in curve]
        ax.plot(radii, [100 * row["accuracy"] for row in curve], drawstyle="steps-pre", label="certified")
        if all("ci95" in row for row in curve):
            low, high = ([100 * row["ci95"][i] for row in curve] for i in (0, 1))
            ax.fill_between(radii, low, high, step="pre", alpha=0.2, label="95% CI")
            ax.legend()
        ax.set(
            xlabel="L2 radius (pixel units of [0,1] images)",
            ylabel="certified accuracy (%)",
            title=f"Randomized smoothing, sigma = {result['sigma']}",
            ylim=(0, 100),
        )


def plot_comparison(reports: list[tuple[str, dict[str, Any]]], path: str | Path) -> None:
    """Ensemble robust accuracy vs eps for several evaluate reports (eps 0 is clean), with 95% intervals."""
    with _figure(path, (6, 4)) as ax:
        norms = set()
        for name, report in reports:
            n = report["n"]
            points = [(0.0, report["clean_accuracy"], report.get("clean_ci95"))]
            points += [(e["eps"], e["robust_accuracy"], e.get("ci95")) for e in report["ensemble"]]
            norms |= {e["norm"] for e in report["ensemble"]}
            scale = 255 if report["ensemble"] and report["ensemble"][0]["norm"] == "linf" else 1
            acc = [(a, ci or ci95_of(a, n)) for _, a, ci in points]
            xs = [eps * scale for eps, _, _ in points]
            ax.errorbar(
                xs, [100 * a for a, _ in acc], yerr=_yerr(acc), marker="o", capsize=3, label=f"{name} (n={n})"
            )
        unit = " x 1/255" if norms == {"linf"} else ""
        ax.set(
            xlabel=f"eps ({'/'.join(sorted(norms))}{unit}; 0 = clean)",
            ylabel="accuracy (%)",
            ylim=(-2, 102),
            title="Ensemble robust accuracy",
        )
        ax.legend()


def plot_folds(
    labels: list[str], series: list[tuple[str, list[tuple[float, list[float]]]]], title: str, path: str | Path
) -> None:
    """Accuracies side by side at each of `labels` (cross-validation's folds, then the pooled row): one
    series per measure, each point (accuracy, [low, high]) with its interval; the last label set apart."""
    width = 0.8 / len(series)
    with _figure(path, (max(5.0, 1.1 * len(labels) + 2), 4)) as ax:
        for i, (name, points) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
            ax.errorbar(xs, [100 * a for a, _ in points], yerr=_yerr(points), fmt="o", capsize=3, label=name)
        ax.set_xticks(range(len(labels)), labels)
        ax.axvline(len(labels) - 1.5, color="grey", lw=0.8)  # folds | pooled
        ax.set(ylabel="held-out accuracy (%)", ylim=(-2, 102), title=title)
        ax.legend()
