"""Plots and human-readable reports (PNG via matplotlib's non-interactive backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .attacks.eps import format_eps  # noqa: E402
from .attacks.registry import get_spec  # noqa: E402
from .runtime import atomic_write_bytes, atomic_write_json  # noqa: E402


def plot_training_curves(history: list[dict], path: Path) -> None:
    """Accuracy and loss per epoch, train vs valid (plus the robust metrics when the run records them).

    Under adversarial training, the train curves are measured on the adversarial training examples.
    """
    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "valid"):
        ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], marker="o", label=split)
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
    for key, label in (("valid_robust_accuracy", "valid, PGD"), ("train_pgd_accuracy", "train batch, PGD")):
        if key in history[-1]:
            ax_acc.plot(epochs, [100 * h.get(key, float("nan")) for h in history], marker="s", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- robustness


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def robustness_table(report: dict[str, Any]) -> list[str]:
    """Markdown rows: one line per attack in cascade order, then the ensemble; one column per eps."""
    eps = [e["eps"] for e in report["ensemble"]]
    acc = {(r["attack"], r["eps"]): r["robust_accuracy"] for r in report["results"]}
    attacks = list(dict.fromkeys(r["attack"] for r in report["results"]))
    rows = [[a] + [_pct(acc[(a, e)]) for e in eps] for a in attacks]
    rows.append(
        ["**ensemble (worst case)**"] + [f"**{_pct(e['robust_accuracy'])}**" for e in report["ensemble"]]
    )
    return _table(["attack"] + [format_eps(e) for e in eps], rows)


def _flag_lines(report: dict[str, Any]) -> list[str]:
    if not report["flags"]:
        return ["No sanity flags raised."]
    return [f"- **{f['flag']}**: {f['detail']}" for f in report["flags"]]


def _mode_note(report: dict[str, Any]) -> str:
    if report["config"].get("independent"):
        return "Independent mode: each attack ran on every clean-correct image; ensemble = correct under all."
    return (
        "Cascade: each row is the accuracy left after that attack *and every row above it*; an attack "
        "only ran on the images still classified correctly."
    )


def format_summary(report: dict[str, Any]) -> str:
    """The few lines printed after an evaluation: clean, robust table, noise at the explicit stds, flags."""
    norm = report["ensemble"][0]["norm"] if report["ensemble"] else ""
    lines = [f"clean accuracy: {_pct(report['clean_accuracy'])} of {report['n']} images", ""]
    if report["model"].get("defense"):
        lines = [f"defence: {report['model']['defense']} (attacked through it with BPDA)", *lines]
    if report["results"]:
        lines += [f"robust accuracy ({norm}); {_mode_note(report)}", *robustness_table(report), ""]
    noise = [c for c in report["corruptions"] if c["std"] is not None]
    if noise:
        lines += ["; ".join(f"{c['label']}: {_pct(c['accuracy'])}" for c in noise), ""]
    return "\n".join(lines + ["sanity flags:", *_flag_lines(report)])


def report_markdown(report: dict[str, Any], plots: list[str]) -> str:
    m, cfg = report["model"], report["config"]
    trained_s = _trained_text(report.get("trained_against"))
    lines = [
        "# Robustness report",
        "",
        f"- model: `{m['run_dir']}` ({m['arch']}, {m['classes']} classes), trained against: {trained_s}",
        *([f"- defence: `{m['defense']}`, attacked through it (BPDA)"] if m.get("defense") else []),
        f"- data: split `{report['split']}`, {report['n']} images"
        + (f" ({len(report['bad_images'])} unreadable, left out)" if report.get("bad_images") else ""),
        f"- attacks ({cfg['norm']}): {_attacks_text(report)}; seed {cfg['seed']}; "
        f"{report['seconds']:.0f} s in all",
        "",
        f"## Clean accuracy: {_pct(report['clean_accuracy'])}",
        "",
        "## Sanity flags",
        "",
        *_flag_lines(report),
        "",
    ]
    if report["results"]:
        lines += [f"## Adversarial robust accuracy ({cfg['norm']})", "", _mode_note(report), ""]
        lines += [*robustness_table(report), "", *_detail_table(report), ""]
    for s in report.get("skipped", []):
        lines.append(f"- skipped {s['attack']}: {s['reason']}")
    if report["corruptions"]:
        rows = [[c["label"], _pct(c["accuracy"])] for c in report["corruptions"]]
        lines += ["", "## Corruptions", "", *_table(["corruption", "accuracy"], rows), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _attacks_text(report: dict[str, Any]) -> str:
    cfg, parts = report["config"], []
    for a in dict.fromkeys(r["attack"] for r in report["results"]):
        options = get_spec(a).options
        if "n_queries" in options:
            parts.append(f"{a} ({cfg['square_queries']} queries)")
        elif "steps" not in options:
            parts.append(a)
        else:
            restarts = f" x{cfg['restarts']} restarts" if a == "pgd" and cfg["restarts"] > 1 else ""
            parts.append(f"{a} ({cfg['steps'].get(a, cfg['default_steps'])} steps{restarts})")
    return ", ".join(parts) or "none"


def _trained_text(trained: dict[str, Any] | None) -> str:
    if trained is None:
        return "unknown (no training metadata)"
    adv = trained.get("adversarial") or {}
    parts = [f"{k} {v:g}" for k, v in trained.items() if k.startswith("noise") and v]
    if adv.get("method", "none") != "none":
        parts.insert(0, ", ".join(f"{k} {format_eps(v) if k == 'eps' else v}" for k, v in adv.items()))
    return "; ".join(parts) or "nothing (standard training)"


def _detail_table(report: dict[str, Any]) -> list[str]:
    rows = [
        [r["attack"], format_eps(r["eps"]), str(r["n_attacked"]), str(r["fooled"]), f"{r['seconds']:.1f}"]
        for r in report["results"]
    ]
    return _table(["attack", "eps", "images attacked", "newly fooled", "seconds"], rows)


def plot_accuracy_vs_eps(report: dict[str, Any], path: Path) -> None:
    """Accuracy vs eps: each attack (thin), the ensemble (thick), clean accuracy as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    norm = report["ensemble"][0]["norm"]
    scale = 255 if norm == "linf" else 1  # Linf eps read in grey levels
    eps = [e["eps"] * scale for e in report["ensemble"]]
    for attack in dict.fromkeys(r["attack"] for r in report["results"]):
        ys = [100 * r["robust_accuracy"] for r in report["results"] if r["attack"] == attack]
        ax.plot(eps, ys, marker=".", alpha=0.7, label=attack)
    ax.plot(eps, [100 * e["robust_accuracy"] for e in report["ensemble"]], "k-o", lw=2.5, label="ensemble")
    ax.axhline(100 * report["clean_accuracy"], color="grey", ls="--", label="clean")
    mode = "each attack alone" if report["config"].get("independent") else "cascade: attacks cumulative"
    unit = " x 1/255" if scale == 255 else ""
    ax.set(
        xlabel=f"eps ({norm}{unit})", ylabel="accuracy (%)", ylim=(-2, 102), title=f"Robust accuracy ({mode})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(examples: list[dict[str, Any]], path: Path) -> None:
    """Per example: original, perturbation (scaled to full contrast so it is visible), adversarial image."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3.2 * len(examples)), squeeze=False)
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
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    report: dict[str, Any], out_dir: str | Path, examples: list[dict[str, Any]] | None = None
) -> Path:
    """Write report.json, report.md, accuracy_vs_eps.png and (with examples) examples.png; -> report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    plots = []
    if report["results"]:
        plot_accuracy_vs_eps(report, out / "accuracy_vs_eps.png")
        plots.append("accuracy_vs_eps.png")
    if examples:
        plot_examples(examples, out / "examples.png")
        plots.append("examples.png")
    atomic_write_bytes(out / "report.md", report_markdown(report, plots).encode())
    return out / "report.md"
