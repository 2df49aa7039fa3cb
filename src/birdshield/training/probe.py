"""Warm-start the classifier head with a linear probe on cached backbone features."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import data
from ..models import Classifier
from ..runtime import progress
from .batches import autocast, make_loader, to_device
from .config import TrainConfig
from .distributed import Dist
from .optim import lr_factor


@torch.inference_mode()
def _features(model: Classifier, loader: DataLoader, device: torch.device, cfg: TrainConfig, flips: bool):
    model.eval()
    feats, labels = [], []
    for batch in progress(loader, desc="caching features"):
        if batch is None:
            continue
        x = to_device(batch[0], device, cfg.channels_last)
        for view in (x, x.flip(-1)) if flips else (x,):
            with autocast(device, cfg):
                feats.append(model.forward_features(view).float())
            labels.append(batch[1].to(device))
    return torch.cat(feats), torch.cat(labels)


def probe_on_cached_features(
    model: Classifier,
    train_ds: data.ImageDataset,
    valid_ds: data.ImageDataset,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[str], None],
) -> None:
    """Fit the linear head on cached backbone features: an epoch costs milliseconds, not minutes.

    Every rank computes the same head from the same data, so DDP needs no communication here.
    """
    one = Dist()  # every rank sees all images
    xtr, ytr = _features(model, make_loader(train_ds, cfg, one, False), device, cfg, flips=cfg.augment.hflip)
    xva, yva = _features(model, make_loader(valid_ds, cfg, one, False), device, cfg, flips=False)
    head = model.head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator(device=xtr.device).manual_seed(cfg.seed)
    steps = math.ceil(len(xtr) / cfg.batch_size)
    best, best_state = -1.0, None
    for epoch in range(cfg.probe_epochs):
        order = torch.randperm(len(xtr), generator=g, device=xtr.device)
        for i, idx in enumerate(order.split(cfg.batch_size)):
            opt.param_groups[0]["lr"] = cfg.lr * lr_factor(epoch * steps + i, cfg.probe_epochs * steps, steps)
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (head(xva).argmax(1) == yva).float().mean().item()
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    log(f"linear probe on cached features: {cfg.probe_epochs} epochs, best valid accuracy {best:.1%}")
