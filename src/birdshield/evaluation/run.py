"""The evaluation driver: chunks of images through the cascade (``cascade``), then the report (``report``).

Images are processed a chunk (``batch_size`` images) at a time, so a test set never sits in memory whole.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import data
from ..distributed import SINGLE, Dist, barrier, gather
from ..inference import inference_logits
from ..runtime import model_device
from .cascade import Tally, attack_plan, clean_pass, corruptions_pass, ensemble_at, pick_examples
from .checks import first_chunk_flags
from .config import N_EXAMPLES, EvalConfig, Models, ProgressFn, config_dict
from .report import build_report
from .sharding import (
    check_resumable,
    chunk_offset,
    deal_chunks,
    merge_examples,
    merge_tallies,
    remove_state_dir,
    state_dir,
)
from .state import (
    STATE_FILE,
    Progress,
    check_contents,
    clear_progress,
    content_digest,
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
    *,
    forward_model: nn.Module | None = None,
    surrogate: nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on (images in [0,1], labels) batches; returns the report dict (see
    :mod:`birdshield.evaluation.report`).

    ``examples``, when a list is given, receives up to 4 images with their worst adversarial input at the
    largest eps (for the report's examples.png). ``on_progress(stage, images_done, total)`` is called per
    attack and chunk. The model is used as given (mode untouched; ``birdshield.load`` gives eval mode).
    ``forward_model``: a forward-only twin of ``model`` (e.g. ``birdshield.load(run, runtime="onnx")``) for
    the passes without gradients; ``surrogate``: a model that crafts the "transfer" attack.
    """
    models, p = Models(model, forward_model, surrogate), Progress(examples=examples)
    _measure(models, _numbered(batches), cfg, p, on_progress, total)
    return _report(models, cfg, p)


# (index of the chunk's first image in the whole sample list, x, y, each image's file or None for tensors)
Chunk = tuple[int, Tensor, Tensor, list[str] | None]


def _numbered(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[Chunk]:
    start = 0
    for x, y in batches:
        yield start, x, y, None
        start += len(y)


def _measure(
    models: Models,
    chunks: Iterable[Chunk],
    cfg: EvalConfig,
    p: Progress,
    on_progress: ProgressFn | None,
    total: int | None,
    after_chunk: Callable[[], None] | None = None,
) -> None:
    """Measure the chunks into ``p`` (updated in place; ``after_chunk`` runs after each chunk)."""
    model, forward = models.model, models.forward_only
    start, earlier, tally, device = time.perf_counter(), p.seconds, p.tally, model_device(model)
    n_classes = len(getattr(model, "class_names", None) or []) or None
    report_progress = on_progress or (lambda stage, done, tot: None)

    def stage(name: str) -> None:
        report_progress(name, tally.n, total)

    for at, x, y, names in chunks:
        x, y = x.to(device), y.to(device)
        seed = cfg.seed + at  # per chunk, and the same whichever session or rank measures it
        clean_logits = inference_logits(forward, x)
        if p.plan is None:  # first chunk: settle the plan and run the one-batch sanity checks
            classes = n_classes or int(clean_logits.shape[1])
            p.plan, p.skipped = attack_plan(cfg, classes, models.surrogate is not None)
            tally.flags += first_chunk_flags(model, models.forward, x, y, clean_logits)
            p.checked_at = at
        correct = clean_pass(clean_logits, y, tally)
        outcomes = _outcomes(names, y, clean_logits, tally)
        stage("corruptions")
        corruptions_pass(forward, x, y, cfg, tally, seed)
        for eps in cfg.eps:
            worst, worst_logits = ensemble_at(
                models, x, y, correct, clean_logits, eps, cfg, p.plan, tally, seed, stage
            )
            if outcomes:  # the worst input's logits: wrong where fooled
                for record, alive in zip(outcomes, (worst_logits.argmax(1) == y).tolist(), strict=True):
                    record["survived"][str(eps)] = alive
            if p.examples is not None and eps == max(cfg.eps):
                k = N_EXAMPLES - len(p.examples)
                picked = pick_examples(model, x, y, worst, correct, eps, k, (clean_logits, worst_logits))
                p.examples += [ex | {"at": at} for ex in picked]  # `at`: merged in order under torchrun
        tally.n += len(y)
        p.seconds = earlier + time.perf_counter() - start
        if after_chunk is not None:
            after_chunk()
        report_progress("done", tally.n, total)


def _outcomes(names: list[str] | None, y: Tensor, clean_logits: Tensor, tally: Tally) -> list[dict[str, Any]]:
    """Each named image's record in the tally (label, clean prediction; ``survived`` filled per eps); none
    for tensors, which have no file to pair by."""
    if names is None:
        return []
    pairs = zip(y.tolist(), clean_logits.argmax(1).tolist(), strict=True)
    records = [{"label": t, "predicted": q, "survived": {}} for t, q in pairs]
    tally.images.update(zip(names, records, strict=True))
    return records


def _report(models: Models, cfg: EvalConfig, p: Progress) -> dict[str, Any]:
    if p.tally.n == 0:
        raise data.DataError("no images to evaluate (every file unreadable, or an empty split)")
    return build_report(p.tally, cfg, models, p.plan or [], p.skipped, p.seconds)


def _merged(p: Progress, chosen: Sequence[data.Sample], d: Dist) -> Progress:
    """Every rank's progress summed into one, as one process would have gathered it (``sharding``)."""
    if d.world == 1:
        return p
    ranks = gather(dataclasses.replace(p, examples=p.examples or []), d)
    checked = min((r for r in ranks if r.plan is not None), key=lambda r: r.checked_at, default=p)
    tally = merge_tallies([r.tally for r in ranks])
    tally.flags = checked.tally.flags  # the checks of the first chunk of all, as in one process
    order = {str(s.path): i for i, s in enumerate(chosen)}
    tally.images = dict(sorted(tally.images.items(), key=lambda kv: order[kv[0]]))
    return Progress(
        tally=tally,
        plan=checked.plan,
        skipped=checked.skipped,
        examples=None if p.examples is None else merge_examples([r.examples for r in ranks]),
        bad_images=sorted((b for r in ranks for b in r.bad_images), key=lambda b: order[b["path"]]),
        samples_done=sum(r.samples_done for r in ranks),
        checked_at=checked.checked_at,
        seconds=max(r.seconds for r in ranks),
    )


# ------------------------------------------------------------------------------------------------ samples


def _sample_chunks(
    samples: Sequence[data.Sample],
    size: int,
    batch_size: int,
    p: Progress,
    position: Callable[[int], int] = lambda i: i,
    digests: bool = False,
) -> Iterator[Chunk]:
    """Chunks of the samples not read yet (from ``p.samples_done``); the same chunks whether a run goes
    through at once or resumes. Unreadable files go to ``p.bad_images``. ``position`` maps an index into
    ``samples`` to one into the whole sample list (``samples`` is a rank's shard under torchrun).
    ``digests``: add each file's content_digest to ``p.contents`` (for the saved progress)."""
    rest = samples[p.samples_done :]
    for good, x, unreadable in data.read_batches([s.path for s in rest], size, batch_size):
        p.bad_images += [{"path": str(path), "error": reason} for path, reason in unreadable]
        at, read = position(p.samples_done), len(good) + len(unreadable)
        if digests:  # read again just after decoding: from the OS's cache
            p.contents += [content_digest(s.path) for s in samples[p.samples_done : p.samples_done + read]]
        p.samples_done += read
        if x is not None:
            yield at, x, torch.tensor([rest[i].label for i in good]), [str(rest[i].path) for i in good]


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[data.Sample],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
    *,
    forward_model: nn.Module | None = None,
    surrogate: nn.Module | None = None,
) -> dict[str, Any]:
    """``evaluate`` on image files (labels = model class indices), read a chunk at a time at the model's
    input size; ``cfg.n`` picks a seeded stratified subset. Unreadable files are listed in bad_images."""
    models = Models(model, forward_model, surrogate)
    chosen, p = data.stratified_subset(samples, cfg.n, cfg.seed), Progress(examples=examples)
    chunks = _sample_chunks(chosen, model.image_size, cfg.batch_size, p)
    _measure(models, chunks, cfg, p, on_progress, len(chosen))
    report = _report(models, cfg, p)
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
    forward_model: nn.Module | None = None,
    surrogate: nn.Module | None = None,
    surrogate_dir: str | Path | None = None,
    shard: Dist = SINGLE,
) -> dict[str, Any]:
    """``evaluate_samples`` into a report folder: report.json, report.md and plots (``reporting``).

    The folder is created and test-written first. Progress is saved there after every chunk
    (``evaluation.state``); ``resume=True`` continues from it, and refuses (OutDirError) progress saved
    with another config, model or sample list. The state files are removed once the report is written.
    ``run_dir``, ``split`` and ``surrogate_dir`` name the model, split and surrogate in the report.
    ``shard``: this process's rank under torchrun; each rank measures its chunks (``sharding``), every
    rank returns the report of all, rank 0 writes it. Returns the report dict.
    """
    out, models = prepare_out_dir(out_dir), Models(model, forward_model, surrogate)
    chosen = data.stratified_subset(samples, cfg.n, cfg.seed)
    mine = [chosen[i] for i in deal_chunks(len(chosen), cfg.batch_size, shard)]
    fingerprint = {
        "config": config_dict(cfg, models),
        "model": model_fingerprint(model),
        "surrogate": None if surrogate is None else model_fingerprint(surrogate),
        "samples": samples_digest(mine),
        "examples": examples,
    } | ({"shard": [shard.rank, shard.world]} if shard.world > 1 else {})
    if resume:
        check_resumable(out, shard)
    state = state_dir(out, shard)
    p = load_progress(state, fingerprint) if resume else None
    if p is not None:
        check_contents(state / STATE_FILE, mine[: p.samples_done], p.contents)
    if p is None:
        clear_progress(state)
        p = Progress(examples=[] if examples else None)
    position = chunk_offset(cfg.batch_size, shard)
    chunks = _sample_chunks(mine, model.image_size, cfg.batch_size, p, position, digests=True)
    save = functools.partial(save_progress, state, fingerprint, p)
    _measure(models, chunks, cfg, p, on_progress, len(mine), after_chunk=save)
    p = _merged(p, chosen, shard)
    report = _report(models, cfg, p)
    report["bad_images"] = p.bad_images
    report["model"]["run_dir"] = None if run_dir is None else str(run_dir)
    report["split"] = split
    if surrogate_dir is not None:
        report["config"]["surrogate"] = str(surrogate_dir)
    if shard.main:
        from ..reporting.writers import write_evaluate_report  # matplotlib: loaded when the report is due

        write_evaluate_report(report, out, p.examples)
    barrier(shard)  # the report is written before any rank's progress goes
    clear_progress(state)
    remove_state_dir(state, shard)
    return report
