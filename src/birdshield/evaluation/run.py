"""The evaluation driver: chunks of images through the cascade (``cascade``), then the report (``report``).

Images are processed a chunk (``batch_size`` images) at a time, so a test set never sits in memory whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import data
from ..attacks.base import inference_logits, model_device
from .cascade import Tally, attack_plan, corruptions_pass, ensemble_at
from .cascade import examples as chunk_examples
from .checks import gradient_flags, stochastic_flag
from .config import N_EXAMPLES, EvalConfig, ProgressFn
from .report import build_report


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
    start, tally, device = time.perf_counter(), Tally(), model_device(model)
    n_classes = len(getattr(model, "class_names", None) or []) or None
    plan, skipped = None, []
    report_progress = on_progress or (lambda stage, done, tot: None)

    def stage(name: str) -> None:
        report_progress(name, tally.n, total)

    for x, y in batches:
        x, y = x.to(device), y.to(device)
        seed = cfg.seed + tally.n  # a different, reproducible noise draw per chunk
        if plan is None:  # first chunk: settle the plan and run the one-batch sanity checks
            plan, skipped = attack_plan(cfg, n_classes or int(inference_logits(model, x[:1]).shape[1]))
            tally.flags += stochastic_flag(model, x) + gradient_flags(model, x, y)
        correct = inference_logits(model, x).argmax(1) == y
        tally.clean += int(correct.sum())
        stage("corruptions")
        corruptions_pass(model, x, y, cfg, tally, seed)
        for eps in cfg.eps:
            worst = ensemble_at(model, x, y, correct, eps, cfg, plan, tally, seed, stage)
            if examples is not None and eps == max(cfg.eps):
                examples += chunk_examples(model, x, y, worst, correct, eps, N_EXAMPLES - len(examples))
        tally.n += len(y)
        report_progress("done", tally.n, total)
    if tally.n == 0:
        raise data.DataError("no images to evaluate (every file unreadable, or an empty split)")
    return build_report(tally, cfg, model, plan or [], skipped, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ samples


def samples_for_model(dataset: data.Dataset, split: str, class_names: Sequence[str]) -> list[data.Sample]:
    """The split's samples relabelled to the model's class indices (by name); other classes are dropped."""
    samples = dataset.splits.get(split) or []
    if not samples:
        raise data.DataError(f"{dataset.root}: split {split!r} is empty or missing")
    index = {name: i for i, name in enumerate(class_names)}
    mapped = [
        data.Sample(s.path, index[dataset.class_names[s.label]])
        for s in samples
        if dataset.class_names[s.label] in index
    ]
    if not mapped:
        raise data.DataError(f"{dataset.root}: none of the {split} classes is one of the model's classes")
    return mapped


def _load_chunks(
    samples: Sequence[data.Sample], size: int, batch_size: int, bad: list[dict[str, str]]
) -> Iterator[tuple[Tensor, Tensor]]:
    for good, x, unreadable in data.read_batches([s.path for s in samples], size, batch_size):
        bad += [{"path": str(path), "error": reason} for path, reason in unreadable]
        if x is not None:
            yield x, torch.tensor([samples[i].label for i in good])


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[data.Sample],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``evaluate`` on image files (labels = model class indices), read a chunk at a time at the model's
    input size; ``cfg.n`` picks a seeded stratified subset. Unreadable files are listed in bad_images."""
    chosen, bad = data.stratified_subset(samples, cfg.n, cfg.seed), []
    chunks = _load_chunks(chosen, model.image_size, cfg.batch_size, bad)
    report = evaluate(model, chunks, cfg, on_progress, examples, total=len(chosen))
    report["bad_images"] = bad
    return report
