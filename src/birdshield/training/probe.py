"""Warm-start the classifier head with a linear probe on cached backbone features."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import data
from ..distributed import Dist
from ..models import Classifier
from ..runtime import allocator_for_onnxruntime
from .config import TrainConfig
from .features import CachedFeatures, cache_root, feature_fn, split_features
from .optim import lr_factor


def _batches(feats: CachedFeatures, views: tuple[str, ...], order: torch.Tensor, size: int, device):
    """Random batches over (view, image) pairs: index j is image usable[j % m] in view j // m."""
    usable = feats.usable
    m = len(usable)
    for idx in order.split(size):
        idx = idx.cpu().numpy()
        parts = [feats.batch(view, usable[idx[idx // m == v] % m], device) for v, view in enumerate(views)]
        parts = [(x, y) for x, y in parts if len(y)]
        yield torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


@torch.no_grad()
def _valid_metrics(head: torch.nn.Module, feats: CachedFeatures, device: torch.device) -> dict:
    loss_sum = correct = 0.0
    usable = feats.usable
    for rows in np.array_split(usable, max(1, math.ceil(len(usable) / 1024))):
        x, y = feats.batch("plain", rows, device)
        logits = head(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = max(len(usable), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": len(usable)}


def probe_on_cached_features(
    model: Classifier,
    train_ds: data.ImageDataset,
    valid_ds: data.ImageDataset,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[str], None],
    d: Dist,
    flips: bool,
) -> dict:
    """Fit the linear head on cached backbone features: an epoch costs milliseconds, not minutes. Returns
    the best epoch's validation loss, accuracy and n (measured on the cached features).

    Every rank computes the same head from the same data, so DDP needs no communication here; each rank
    keeps its own cache folder, so no two processes write one file.
    """
    cache = cache_root(cfg.feature_cache)
    if cache is not None and d.world > 1:
        cache = cache / f"rank{d.rank}"
    forward = functools.cache(lambda: feature_fn(model, device, cfg))  # exported once, on first need
    views = ("plain", "flip") if flips else ("plain",)
    # on a CPU the features come from onnxruntime (feature_fn)
    with allocator_for_onnxruntime() if device.type == "cpu" else contextlib.nullcontext():
        tr, key = split_features(model, train_ds, views, cfg, device, cache, "train features", forward)
        va, _ = split_features(model, valid_ds, ("plain",), cfg, device, cache, "valid features", forward)
    if key:
        log(f"features cached in {cache / key} (reused by later runs; --feature-cache none: in memory)")
    if not len(tr.usable) or not len(va.usable):
        raise data.DataError("no readable image in the train or the valid split")
    head = model.head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    pairs = len(views) * len(tr.usable)
    steps = math.ceil(pairs / cfg.batch_size)
    best, best_state = {"accuracy": -1.0}, None
    for epoch in range(cfg.probe_epochs):
        head.train()
        order = torch.randperm(pairs, generator=g)
        for i, (x, y) in enumerate(_batches(tr, views, order, cfg.batch_size, device)):
            opt.param_groups[0]["lr"] = cfg.lr * lr_factor(epoch * steps + i, cfg.probe_epochs * steps, steps)
            loss = F.cross_entropy(head(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        valid = _valid_metrics(head, va, device)
        if valid["accuracy"] > best["accuracy"]:
            best, best_state = valid, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    log(
        f"linear probe on cached features ({len(tr.usable)} images x {len(views)} views): "
        f"{cfg.probe_epochs} epochs, best valid accuracy {best['accuracy']:.1%}"
    )
    return best
