"""Certified accuracy of a dataset under randomized smoothing: CERTIFY (``defenses.smoothing.Smoothed``) on
every image, per-image records, and certified accuracy against the L2 radius."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data
from ..defenses.smoothing import ABSTAIN, Smoothed
from ..distributed import SINGLE, Dist, barrier, gather
from ..reporting.markdown import DEFAULT_RADII
from ..runtime import model_device, progress
from ..stats import ci95
from .sharding import check_resumable, interleave, remove_state_dir, state_dir
from .state import (
    CertifyLog,
    check_contents,
    content_digest,
    model_fingerprint,
    prepare_out_dir,
    samples_digest,
)


def certified_accuracy(images: Sequence[dict], radii: Sequence[float]) -> list[dict[str, Any]]:
    """Fraction of (readable) images classified correctly with a certified radius >= r, for each r."""
    ok = [im for im in images if not im.get("error")]
    good = [im["radius"] for im in ok if im["correct"]]
    counts = [sum(g >= r for g in good) for r in radii]
    n = len(ok)
    return [
        {"radius": r, "accuracy": k / max(1, n), "n": n, "ci95": ci95(k, n)}
        for r, k in zip(radii, counts, strict=True)
    ]


def _radius_grid(images: Sequence[dict], min_radius: float = 0.0) -> list[float]:
    """DEFAULT_RADII, more 0.25 steps past the largest radius, and every radius where the curve drops; from
    `min_radius` on (below it, images that stopped early are not counted, so the curve would be low)."""
    seen = [im["radius"] for im in images if im.get("correct")]
    grid = set(DEFAULT_RADII) | set(seen) | {min_radius}
    top = max([*seen, DEFAULT_RADII[-1]])
    grid |= {0.25 * k for k in range(1, int(top / 0.25) + 2)}
    return sorted(r for r in grid if r >= min_radius)


def _certify_one(
    smoothed: Smoothed, sample: data.Sample, size: int, device: torch.device, args: dict[str, Any]
) -> dict[str, Any]:
    record: dict[str, Any] = {"image": str(sample.path), "label": sample.label}
    try:
        x = data.load_tensor(sample.path, size)[None].to(device)
    except data.BadImageError as e:
        return {**record, "prediction": None, "correct": False, "radius": None, "error": e.reason}
    start = time.perf_counter()
    classes, radii, votes = smoothed.certify_with_votes(x, **args)
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
        "samples": int(votes[0].sum()),  # fewer than n: stopped early, unable to reach min_radius
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
    min_radius: float = 0.0,
) -> dict[str, Any]:
    """CERTIFY every sample; per-image records plus certified accuracy against the radius (from
    `min_radius`: see Smoothed.certify).

    Each image's noise is seeded with seed + its index, so a record does not depend on the other images.
    Unreadable images are listed with their error and left out of the accuracies.
    """
    smoothed = Smoothed(model, sigma, batch_size)
    params = {"n0": n0, "n": n, "alpha": alpha, "seed": seed, "min_radius": min_radius}
    return _summary(_certify_images(smoothed, samples, params, []), sigma=sigma, **params)


def certify_to_dir(
    model: nn.Module,
    samples: Sequence[data.Sample],
    out_dir: str | Path,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 100,
    min_radius: float = 0.0,
    resume: bool = False,
    header: Mapping[str, Any] | None = None,
    shard: Dist = SINGLE,
) -> dict[str, Any]:
    """``certify_dataset`` into a report folder: certify.json, certify.md, certified_accuracy.png.

    The folder is created and test-written first. Each image's record is appended to
    ``OUT/certify.jsonl`` as it is certified; ``resume=True`` continues after the records there, and refuses
    (OutDirError) a log written with other parameters, model or samples. The log is removed once the report
    is written. ``header`` (e.g. run, data, split) leads the result. ``shard``: this process's rank under
    torchrun; each rank certifies every world-th image (``sharding``), every rank returns the result of all,
    rank 0 writes it. Returns the result dict.
    """
    smoothed = Smoothed(model, sigma, batch_size)
    out = prepare_out_dir(out_dir)
    params = {"n0": n0, "n": n, "alpha": alpha, "seed": seed, "min_radius": min_radius}
    mine = range(shard.rank, len(samples), shard.world)
    fingerprint = {
        "params": {"sigma": sigma, **params, "batch_size": batch_size},
        "model": model_fingerprint(model),
        "samples": samples_digest([samples[i] for i in mine]),
    } | ({"shard": [shard.rank, shard.world]} if shard.world > 1 else {})
    if resume:
        check_resumable(out, shard)
    state = state_dir(out, shard)
    log = CertifyLog(state, fingerprint, resume)
    check_contents(log.path, [samples[i] for i in mine[: len(log.records)]], log.digests)

    def save(record: dict[str, Any], sample: data.Sample) -> None:
        log.append(record, content_digest(sample.path))

    images = _certify_images(smoothed, samples, params, log.records, save, mine, bar=shard.main)
    images = interleave(gather(images, shard))
    result = {**(header or {}), **_summary(images, sigma=sigma, **params)}
    if shard.main:
        from ..reporting.writers import write_certify_report  # matplotlib: loaded when the report is due

        write_certify_report(result, out)
    barrier(shard)  # the report is written before any rank's log goes
    log.remove()
    remove_state_dir(state, shard)
    return result


def _certify_images(
    smoothed: Smoothed,
    samples: Sequence[data.Sample],
    params: dict[str, Any],
    done: list[dict[str, Any]],
    on_record: Callable[[dict[str, Any], data.Sample], None] | None = None,
    indices: Sequence[int] | None = None,
    bar: bool = True,
) -> list[dict[str, Any]]:
    """Records of the samples at ``indices`` (default: all): ``done`` (those certified before), then the
    rest, each passed to ``on_record`` (with its sample) as it is made. Image i's noise is seeded with
    seed + i, whichever rank certifies it."""
    model, images = smoothed.model, list(done)
    device, names = model_device(model), list(model.class_names)
    indices = range(len(samples)) if indices is None else indices
    todo = indices[len(images) :]
    if bar:  # under torchrun rank 0's bar stands for all
        todo = progress(todo, desc="certify", unit="img", initial=len(images), total=len(indices))
    for i in todo:
        args = {**params, "seed": params["seed"] + i}
        record = _certify_one(smoothed, samples[i], model.image_size, device, args)
        record["label"] = names[record["label"]]
        if record["prediction"] is not None:
            record["prediction"] = None if record["prediction"] == ABSTAIN else names[record["prediction"]]
        images.append(record)
        if on_record is not None:
            on_record(record, samples[i])
    return images


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
        "certified_accuracy": certified_accuracy(images, _radius_grid(images, params.get("min_radius", 0))),
        "images": images,
    }
