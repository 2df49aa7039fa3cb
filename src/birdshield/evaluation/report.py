"""The evaluation report: a JSON-ready dict built from the tallies alone.

Report schema (``evaluate`` returns it; ``reporting.write_evaluate_report`` stores it as ``report.json``)::

    model:          {run_dir, arch, classes, defense}: run_dir is filled in by the caller; defense is
                    the input transform attacked through with BPDA (``Defended``), or None
    split:          dataset split name or None
    n:              images evaluated (readable ones)
    clean_accuracy: fraction of the n images classified correctly
    clean_ci95:     its 95% Clopper-Pearson interval [low, high]; every accuracy below has its own "ci95"
    top5_accuracy:  fraction whose true class is among the 5 highest logits (top5_ci95 its interval)
    per_class:      [{class, n, accuracy, ci95}] clean accuracy per class, worst first
    confused_pairs: [{true, predicted, count}] the most frequent clean mistakes (at most 20), most first
    trained_against: the run's recorded {adversarial: {method, eps, ...}, noise_max, noise_sigma}
                    (rebuilt from older runs' training config; None without training metadata)
    corruptions:    [{name, severity, std, label, accuracy, ci95}]  severity None when an explicit noise
                    std is used; label e.g. "jpeg severity=3" or "gaussian_noise std=0.1"
    results:        [{attack, norm, eps, robust_accuracy, ci95, fooled, n_attacked, n, seconds}] per eps, in
                    cascade order. Cascade: robust_accuracy = fraction of all n images still correct after
                    this attack and every earlier one; fooled = images newly fooled by this attack;
                    n_attacked = images it ran on (the survivors of the previous attack). Independent mode:
                    every attack runs on all clean-correct images and robust_accuracy is its own.
    ensemble:       [{norm, eps, robust_accuracy, n, ci95}] worst case per image over all attacks
    flags:          [{flag, detail}] sanity checks that failed (see ``checks``); [] when none
    skipped:        [{attack, reason}] requested attacks that cannot run here (wrong norm, too few classes)
    bad_images:     [{path, error}] unreadable files left out of n
    images:         [{image, label, predicted, correct, robust}] each image file's outcome: its clean
                    prediction and, per eps (as a string), whether it survived the ensemble ("robust");
                    [] for images given as tensors. What `compare --paired` pairs two reports by
    config:         the EvalConfig used (surrogate given as its architecture name, or its run directory)
    seconds:        wall time of the whole evaluation (summed over resumed sessions)
"""

from __future__ import annotations

from typing import Any

from ..stats import ci95
from .cascade import Tally, corruption_specs
from .checks import final_flags
from .config import EvalConfig, Models, config_dict


def trained_against(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the run was trained against: its recorded ``trained_against``, or the same summary rebuilt
    from an older run's training config (no adversarial training then). None without training metadata."""
    if isinstance(meta.get("trained_against"), dict):
        return meta["trained_against"]
    training = meta.get("training")
    if not isinstance(training, dict):
        return None
    augment = training.get("augment") or {}
    return {
        "adversarial": {"method": "none"},
        "noise_max": augment.get("noise_max", 0.0),
        "noise_sigma": augment.get("noise_sigma", 0.0),
    }


def per_class(tally: Tally, class_names: list[str] | None) -> list[dict[str, Any]]:
    """Clean accuracy of each class seen, worst first (ties by name)."""
    name = (lambda i: class_names[i]) if class_names else str
    rows = [
        {
            "class": name(c),
            "n": k,
            "accuracy": tally.per_class_correct[c] / k,
            "ci95": ci95(tally.per_class_correct[c], k),
        }
        for c, k in tally.per_class.items()
    ]
    return sorted(rows, key=lambda r: (r["accuracy"], r["class"]))


def confused_pairs(tally: Tally, class_names: list[str] | None, most: int = 20) -> list[dict[str, Any]]:
    name = (lambda i: class_names[int(i)]) if class_names else str
    pairs = sorted(tally.confused.items(), key=lambda kv: (-kv[1], kv[0]))[:most]
    return [
        {"true": name(t), "predicted": name(p), "count": k}
        for (t, p), k in ((key.split(","), k) for key, k in pairs)
    ]


def images(tally: Tally, class_names: list[str] | None) -> list[dict[str, Any]]:
    """Each image file's outcome, in the order measured (see the schema)."""

    def name(c: int) -> str | int:
        return class_names[c] if class_names else c

    return [
        {
            "image": image,
            "label": name(r["label"]),
            "predicted": name(r["predicted"]),
            "correct": r["label"] == r["predicted"],
            "robust": r["survived"],
        }
        for image, r in tally.images.items()
    ]


def build_report(
    tally: Tally, cfg: EvalConfig, models: Models, plan: list[str], skipped: list, seconds: float
) -> dict[str, Any]:
    n, model = tally.n, models.model
    meta = getattr(model, "meta", {})
    classes = getattr(model, "class_names", None)
    results = [
        {
            "attack": name,
            "norm": cfg.norm,
            "eps": e,
            "robust_accuracy": tally.attacks[(e, name)].robust / n,
            "ci95": ci95(tally.attacks[(e, name)].robust, n),
            "fooled": tally.attacks[(e, name)].fooled,
            "n_attacked": tally.attacks[(e, name)].n_attacked,
            "n": n,
            "seconds": round(tally.attacks[(e, name)].seconds, 3),
        }
        for e in cfg.eps
        for name in plan
    ]
    corruptions = [
        {k: s[k] for k in ("name", "severity", "std", "label")}
        | {"accuracy": tally.corrupt[s["label"]] / n, "ci95": ci95(tally.corrupt[s["label"]], n)}
        for s in corruption_specs(cfg)
    ]
    return {
        "model": {
            "run_dir": None,
            "arch": meta.get("arch"),
            "classes": len(classes) if classes else None,
            "defense": meta.get("defense"),
            "tta_flip": bool(meta.get("tta_flip", False)),
        },
        "split": None,
        "n": n,
        "clean_accuracy": tally.clean / n,
        "clean_ci95": ci95(tally.clean, n),
        "top5_accuracy": tally.top5 / n,
        "top5_ci95": ci95(tally.top5, n),
        "per_class": per_class(tally, classes),
        "confused_pairs": confused_pairs(tally, classes),
        "trained_against": trained_against(meta),
        "corruptions": corruptions,
        "results": results,
        "ensemble": [
            {
                "norm": cfg.norm,
                "eps": e,
                "robust_accuracy": tally.ensemble[e] / n,
                "n": n,
                "ci95": ci95(tally.ensemble[e], n),
            }
            for e in cfg.eps
        ],
        "flags": final_flags(tally, cfg, plan),
        "skipped": skipped,
        "bad_images": [],
        "images": images(tally, classes),
        "config": config_dict(cfg, models),
        "seconds": round(seconds, 2),
    }
