"""The evaluation driver: chunks of images through the cascade (``cascade``), then the report (``report``).

Images are processed a chunk (``batch_size`` images) at a time, so a test set never sits in memory whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import data
from ..attacks.base import inference_logits
from ..runtime import model_device
from .cascade import attack_plan, clean_pass, corruptions_pass, ensemble_at, pick_examples
from .checks import model_flags
from .config import N_EXAMPLES, EvalConfig, ProgressFn, config_dict
from .report import build_report
from .state import (
    Progress,
    clear_progress,
    load_progress,
    model_fingerprint,
    prepare_out_dir,
    samples_digest,
    save_progress,
)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on (images in [0,1], labels) batches; returns the report dict (see
    :mod:`birdshield.evaluation.report`).

    ``examples``, when a list is given, receives up to 4 images with their worst adversarial input at the
    largest eps (for the report's examples.png). ``on_progress(stage, images_done, total)`` is called per
    attack and chunk. The model is used as given (mode untouched; ``load`` returns it in eval mode).
    """
    return _evaluate(model, batches, cfg, Progress(examples=examples), on_progress, total)


def _evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    cfg: EvalConfig,
    p: Progress,
    on_progress: ProgressFn | None,
    total: int | None,
    after_chunk: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``evaluate`` continuing from ``p`` (updated in place; ``after_chunk`` runs after each chunk)."""
    start, earlier, tally, device = time.perf_counter(), p.seconds, p.tally, model_device(model)
    n_classes = len(getattr(model, "class_names", None) or []) or None
    report_progress = on_progress or (lambda stage, done, tot: None)

    def stage(name: str) -> None:
        report_progress(name, tally.n, total)

    for x, y in batches:
        x, y = x.to(device), y.to(device)
        seed = cfg.seed + tally.n  # a different, reproducible noise draw per chunk
        clean_logits = inference_logits(model, x)
        if p.plan is None:  # first chunk: settle the plan and run the one-batch sanity checks
            p.plan, p.skipped = attack_plan(cfg, n_classes or int(clean_logits.shape[1]))
            tally.flags += model_flags(model, x, y, clean_logits)
        correct = clean_pass(clean_logits, y, tally)
        stage("corruptions")
        corruptions_pass(model, x, y, cfg, tally, seed)
        for eps in cfg.eps:
            worst, worst_logits = ensemble_at(
                model, x, y, correct, clean_logits, eps, cfg, p.plan, tally, seed, stage
            )
            if p.examples is not None and eps == max(cfg.eps):
                k = N_EXAMPLES - len(p.examples)
                p.examples += pick_examples(model, x, y, worst, correct, eps, k, (clean_logits, worst_logits))
        tally.n += len(y)
        p.seconds = earlier + time.perf_counter() - start
        if after_chunk is not None:
            after_chunk()
        report_progress("done", tally.n, total)
    if tally.n == 0:
        raise data.DataError("no images to evaluate (every file unreadable, or an empty split)")
    seconds = earlier + time.perf_counter() - start
    return build_report(tally, cfg, model, p.plan or [], p.skipped, seconds)


# ------------------------------------------------------------------------------------------------ samples


def _sample_chunks(
    samples: Sequence[data.Sample], size: int, batch_size: int, p: Progress
) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of the samples not read yet (from ``p.samples_done``); the same chunks whether a run goes
    through at once or resumes. Unreadable files go to ``p.bad_images``."""
    rest = samples[p.samples_done :]
    for good, x, unreadable in data.read_batches([s.path for s in rest], size, batch_size):
        p.bad_images += [{"path": str(path), "error": reason} for path, reason in unreadable]
        p.samples_done += len(good) + len(unreadable)
        if x is not None:
            yield x, torch.tensor([rest[i].label for i in good])


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[data.Sample],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``evaluate`` on image files (labels = model class indices), read a chunk at a time at the model's
    input size; ``cfg.n`` picks a seeded stratified subset. Unreadable files are listed in bad_images."""
    chosen, p = data.stratified_subset(samples, cfg.n, cfg.seed), Progress(examples=examples)
    chunks = _sample_chunks(chosen, model.image_size, cfg.batch_size, p)
    report = _evaluate(model, chunks, cfg, p, on_progress, total=len(chosen))
    report["bad_images"] = p.bad_images
    return report


def evaluate_to_dir(
    model: nn.Module,
    samples: Sequence[data.Sample],
    cfg: EvalConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_progress: ProgressFn | None = None,
    examples: bool = True,
    run_dir: str | Path | None = None,
    split: str | None = None,
    surrogate_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``evaluate_samples`` into a report folder: report.json, report.md and plots (``reporting``).

    The folder is created and test-written first. Progress is saved there after every chunk
    (``evaluation.state``); ``resume=True`` continues from it, and refuses (OutDirError) progress saved
    with another config, model or sample list. The state files are removed once the report is written.
    ``run_dir``, ``split`` and ``surrogate_dir`` name the model, split and surrogate in the report.
    Returns the report dict.
    """
    out = prepare_out_dir(out_dir)
    chosen = data.stratified_subset(samples, cfg.n, cfg.seed)
    fingerprint = {
        "config": config_dict(cfg),
        "model": model_fingerprint(model),
        "surrogate": None if cfg.surrogate is None else model_fingerprint(cfg.surrogate),
        "samples": samples_digest(chosen),
        "examples": examples,
    }
    p = load_progress(out, fingerprint) if resume else None
    if p is None:
        clear_progress(out)
        p = Progress(examples=[] if examples else None)
    chunks = _sample_chunks(chosen, model.image_size, cfg.batch_size, p)
    report = _evaluate(
        model,
        chunks,
        cfg,
        p,
        on_progress,
        len(chosen),
        after_chunk=lambda: save_progress(out, fingerprint, p),
    )
    report["bad_images"] = p.bad_images
    report["model"]["run_dir"] = None if run_dir is None else str(run_dir)
    report["split"] = split
    if surrogate_dir is not None:
        report["config"]["surrogate"] = str(surrogate_dir)
    from ..reporting.writers import write_evaluate_report  # matplotlib: loaded when the report is due

    write_evaluate_report(report, out, p.examples)
    clear_progress(out)
    return report
