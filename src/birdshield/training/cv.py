"""K-fold cross-validation of a training recipe on the train and valid images (`train --cv K`): the way to
choose a recipe without looking at the test split.

The train and valid images are pooled and dealt into K folds, stratified by species and seeded. For each
fold the recipe trains on the other folds, as a user trains it (with its own validation split carved from
them, in the data set's own valid share, for early stopping and checkpoint selection), and is then
measured on the fold it never saw: clean accuracy and, at each `eps`, robust accuracy under the quick
attack ensemble. Each fold's run and report are kept in OUT/fold-I/; OUT/cv.json and cv.md hold the
per-fold numbers and the pooled ones (every held-out image once, with a Clopper-Pearson interval), and
OUT/cv.png plots them with their intervals. cv.json also keeps each held-out image's outcome, so that
`birdshield compare OUT_A OUT_B --paired` compares two recipes cross-validated with one seed image by image.

Folds train on fewer images than the recipe on the full splits ((K-1)/K of the pool, less the inner valid
share), so cross-validated accuracy slightly understates what the full training reaches.
Resumable: a fold already trained and measured with the same options is not done again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import data
from ..runtime import atomic_write_bytes, atomic_write_json
from ..stats import ci95
from .config import TrainConfig

CV_FILE, CV_MARKDOWN, CV_PLOT = "cv.json", "cv.md", "cv.png"


def fold_of(samples: Sequence[data.Sample], k: int, seed: int) -> list[int]:
    """The fold of each sample: each species' images shuffled (seeded) and dealt round-robin, so every
    fold holds every species in proportion (the species' first fold rotates, keeping folds equal in size)."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.label].append(i)
    rng, folds, offset = random.Random(seed), [0] * len(samples), 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        for j, i in enumerate(members):
            folds[i] = (offset + j) % k
        offset += len(members)
    return folds


def fold_dataset(dataset: data.Dataset, k: int, fold: int, seed: int) -> data.Dataset:
    """The data set of one fold: "test" is the held-out fold; "train" and "valid" split the other folds
    per species in the data set's own valid share (at least one valid image per species)."""
    pool = dataset.splits["train"] + dataset.splits["valid"]
    if not dataset.splits["valid"]:
        raise data.DataError(f"{dataset.root}: cross-validation needs a valid split to size its own")
    share = len(dataset.splits["valid"]) / len(pool)
    folds = fold_of(pool, k, seed)
    held = [s for s, f in zip(pool, folds, strict=True) if f == fold]
    rest: dict[int, list[data.Sample]] = defaultdict(list)
    for s, f in zip(pool, folds, strict=True):
        if f != fold:
            rest[s.label].append(s)
    rng, train, valid = random.Random(seed * 1_000 + fold), [], []
    for label in sorted(rest):
        members = sorted(rest[label], key=lambda s: s.path)
        rng.shuffle(members)
        cut = max(1, round(len(members) * share)) if len(members) > 1 else 0
        valid += members[:cut]
        train += members[cut:]
    by_path = sorted  # splits in path order, as discover() gives them
    splits = {
        "train": by_path(train, key=lambda s: s.path),
        "valid": by_path(valid, key=lambda s: s.path),
        "test": by_path(held, key=lambda s: s.path),
    }
    return dataclasses.replace(dataset, splits=splits)


def cross_validate(
    cfg: TrainConfig,
    k: int,
    eps: Sequence[float] = (),
    folds: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Cross-validate the recipe `cfg` over `k` folds of `cfg.data`'s train and valid images into
    `cfg.out` (see the module doc); `folds` runs only those (the summary covers the folds done so far).
    Returns the summary written to OUT/cv.json."""
    from ..export import weights_digest
    from .loop import train

    dataset = data.discover(cfg.data)
    if not dataset.splits["train"]:
        raise data.DataError(f"{cfg.data}: cross-validation needs images in the train split")
    out = Path(cfg.out)
    todo = range(k) if folds is None else folds
    for fold in todo:
        if not 0 <= fold < k:
            raise ValueError(f"fold {fold} does not exist: folds are numbered 0..{k - 1}")
    summary = _load(out, cfg, k, eps)
    for fold in todo:
        split = fold_dataset(dataset, k, fold, cfg.seed)
        run_dir = out / f"fold-{fold}"
        sizes = {name: len(samples) for name, samples in split.splits.items()}
        log(
            f"== fold {fold + 1}/{k}: train on {sizes['train']} (+{sizes['valid']} valid), measure on "
            f"{sizes['test']} held-out images -> {run_dir}"
        )
        train(dataclasses.replace(cfg, out=str(run_dir), resume=True), dataset=split)
        digest, done = weights_digest(run_dir), summary["folds"].get(str(fold), {})
        if done.get("weights_sha256") != digest:  # measured once per trained model
            done = _measure(run_dir, split, eps, cfg.device) | {"weights_sha256": digest}
        teacher = run_dir / "teacher"  # --teacher auto's or standard's: this fold's photos only
        if "teacher_clean" not in done and (teacher / "birdshield.json").is_file():
            done["teacher_clean"] = _clean_correct(teacher, split, cfg.device)
        summary["folds"][str(fold)] = done
        _save(out, _pooled(summary))
    summary = _pooled(summary)
    log(cv_markdown(summary))
    return summary


def _measure(run_dir: Path, split: data.Dataset, eps: Sequence[float], device: str) -> dict[str, Any]:
    """A fold's model on its held-out images: clean, and the quick ensemble at each eps (resumable)."""
    from ..evaluation import PRESETS, evaluate_to_dir

    model, twin = _load_model(run_dir, device)
    cfg = dataclasses.replace(PRESETS["quick"], eps=tuple(eps), corruptions=(), noise_std=())
    if not eps:
        cfg = dataclasses.replace(cfg, attacks=())
    report = evaluate_to_dir(
        model,
        split.splits["test"],
        cfg,
        run_dir / "heldout",
        resume=(run_dir / "heldout").is_dir(),
        forward_model=twin,
        run_dir=run_dir,
        split="held-out fold",
        examples=False,
    )
    n = report["n"]
    return {
        "n": n,
        "clean": round(report["clean_accuracy"] * n),
        "robust": {str(e["eps"]): round(e["robust_accuracy"] * n) for e in report["ensemble"]},
        "valid_score": json.loads((run_dir / "birdshield.json").read_text())["metrics"],
        "images": [{k: im[k] for k in ("image", "correct", "robust")} for im in report["images"]],
    }


def _clean_correct(run_dir: Path, split: data.Dataset, device: str) -> int:
    """How many of the held-out images (`split`'s test) the model in `run_dir` names right, unattacked."""
    from ..evaluation import PRESETS, evaluate_samples

    model, twin = _load_model(run_dir, device)
    cfg = dataclasses.replace(PRESETS["quick"], attacks=(), eps=(), corruptions=(), noise_std=())
    report = evaluate_samples(model, split.splits["test"], cfg, forward_model=twin)
    return round(report["clean_accuracy"] * report["n"])


def _load_model(run_dir: Path, device: str) -> tuple[Any, Any]:
    """The run's model for gradients, and on a CPU its onnxruntime twin for the passes without them."""
    import birdshield

    from ..models import resolve_runtime

    model = birdshield.load(run_dir, device=device)
    onnx = resolve_runtime("auto", device, run_dir) == "onnx"
    return model, birdshield.load(run_dir, runtime="onnx", device=device) if onnx else None


def _recipe_key(cfg: TrainConfig, k: int, eps: Sequence[float], *, data_as_typed: bool = False) -> str:
    """What identifies a cross-validation: the recipe, k and eps. The data set counts by its resolved path,
    so `../birds` and `/home/me/birds` resume the same one (`data_as_typed`: the key of older versions,
    which took the path as typed)."""
    recipe = {
        n: v for n, v in dataclasses.asdict(cfg).items() if n not in ("out", "resume", "device", "workers")
    }
    if not data_as_typed:
        recipe["data"] = str(Path(cfg.data).resolve())
    text = json.dumps({"recipe": recipe, "k": k, "eps": list(eps)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _load(out: Path, cfg: TrainConfig, k: int, eps: Sequence[float]) -> dict[str, Any]:
    """The summary saved in OUT (the folds measured so far), or a new one; OutDirError if OUT holds the
    cross-validation of another recipe."""
    from ..errors import OutDirError

    key, path = _recipe_key(cfg, k, eps), out / CV_FILE
    if not path.is_file():
        return {"k": k, "seed": cfg.seed, "eps": list(eps), "recipe_key": key, "folds": {}}
    saved = json.loads(path.read_text())
    if saved.get("recipe_key") not in (key, _recipe_key(cfg, k, eps, data_as_typed=True)):
        raise OutDirError(
            f"{path} holds the cross-validation of another recipe, fold count or eps; choose another --out"
        )
    return saved | {"recipe_key": key}


Count = Callable[[dict[str, Any]], int]


def _measures(summary: dict[str, Any]) -> list[tuple[str, str, Count]]:
    """What each fold measured, as (key in the pooled summary, column label, a fold's correct count): clean,
    the ensemble at each eps, and the automatic teacher's clean accuracy where every fold has it."""
    from ..attacks.eps import format_eps

    measures: list[tuple[str, str, Count]] = [("clean", "clean", lambda f: f["clean"])]
    for e in summary["eps"]:
        measures.append((str(e), f"quick ensemble linf {format_eps(e)}", lambda f, e=str(e): f["robust"][e]))
    folds = summary["folds"].values()
    if folds and all("teacher_clean" in f for f in folds):
        measures.append(("teacher_clean", "teacher clean", lambda f: f["teacher_clean"]))
    return measures


def _folds_in_order(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(summary["folds"].items(), key=lambda kv: int(kv[0]))


def _pooled(summary: dict[str, Any]) -> dict[str, Any]:
    """Every held-out image once: the sums over the folds done, with intervals, and the folds' spread."""
    folds = list(summary["folds"].values())
    n = sum(f["n"] for f in folds)
    pooled: dict[str, Any] = {"folds_done": sorted(map(int, summary["folds"])), "n": n}
    for key, _, count in _measures(summary):
        k = sum(map(count, folds))
        per_fold = [count(f) / f["n"] for f in folds]
        mean = sum(per_fold) / len(per_fold) if per_fold else 0.0
        spread = (
            (sum((a - mean) ** 2 for a in per_fold) / (len(per_fold) - 1)) ** 0.5 if len(folds) > 1 else 0.0
        )
        pooled[key] = {
            "accuracy": k / n if n else 0.0,
            "correct": k,
            "ci95": ci95(k, n),
            "fold_mean": mean,
            "fold_std": spread,
        }
    return {**summary, "pooled": pooled}


def as_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The pooled cross-validation in the shape of an evaluate report, for `birdshield compare`: n, clean
    and the ensemble at each eps, and each held-out photo's outcome where every fold recorded them (folds
    measured by older versions did not), so two cross-validations with one seed pair photo by photo."""
    from ..errors import DataError

    pooled, folds = summary.get("pooled", {}), list(summary["folds"].values())
    if not pooled.get("n"):
        raise DataError("the cross-validation has no measured fold yet")

    def entry(key: str) -> dict[str, Any]:
        return {"robust_accuracy": pooled[key]["accuracy"], "ci95": pooled[key]["ci95"], "n": pooled["n"]}

    return {
        "n": pooled["n"],
        "clean_accuracy": pooled["clean"]["accuracy"],
        "clean_ci95": pooled["clean"]["ci95"],
        "corruptions": [],
        "results": [],
        "ensemble": [{"norm": "linf", "eps": e} | entry(str(e)) for e in summary["eps"]],
        "flags": [],
        "images": [im for f in folds for im in f["images"]] if all("images" in f for f in folds) else [],
    }


def _save(out: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out / CV_FILE, summary)
    atomic_write_bytes(out / CV_MARKDOWN, (cv_markdown(summary) + "\n").encode())
    _plot(summary, out / CV_PLOT)


def _plot(summary: dict[str, Any], path: Path) -> None:
    """Each fold and the pooled row, every measure with its 95% interval."""
    from ..reporting.plots import plot_folds

    folds, p = _folds_in_order(summary), summary["pooled"]
    series = [
        (
            label,
            [(count(f) / f["n"], ci95(count(f), f["n"])) for _, f in folds]
            + [(p[key]["accuracy"], p[key]["ci95"])],
        )
        for key, label, count in _measures(summary)
    ]
    title = f"Cross-validation, {summary['k']} folds (seed {summary['seed']}), 95% intervals"
    plot_folds([f"fold {fold}" for fold, _ in folds] + ["pooled"], series, title, path)


def cv_markdown(summary: dict[str, Any]) -> str:
    """The cross-validation table: one row per fold, then the pooled row with its 95% interval; with the
    automatic teacher's clean accuracy beside the model's where the recipe trained one."""
    measures, p = _measures(summary), summary["pooled"]
    head = ["fold", "n", *(label for _, label, _ in measures)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fold, f in _folds_in_order(summary):
        cells = [_pct(count(f), f["n"]) for _, _, count in measures]
        lines.append(f"| {fold} | {f['n']} | " + " | ".join(cells) + " |")
    cells = [_pct_ci(p[key]) for key, _, _ in measures]
    lines.append(
        f"| **all {len(p['folds_done'])} of {summary['k']}** | {p['n']} | " + " | ".join(cells) + " |"
    )
    notes = ["pooled: every held-out image once, 95% Clopper-Pearson interval; folds' mean +- sd in cv.json"]
    if "teacher_clean" in p:
        notes.append(
            "teacher clean: the teacher --teacher trained first on the same photos (no attacks), on the same"
            " held-out ones: what the robust model was distilled from"
        )
    return "\n".join(
        [
            f"cross-validation, {summary['k']} folds (seed {summary['seed']}): accuracy on held-out images",
            "",
            *lines,
            "",
            *notes,
        ]
    )


def _pct(k: int, n: int) -> str:
    return f"{k / n:.1%}" if n else "-"


def _pct_ci(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['accuracy']:.1%} ({low:.1%}-{high:.1%})"
