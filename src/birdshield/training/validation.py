"""Validation during training, and keeping the best checkpoint: the score an epoch is judged by is
clean accuracy, accuracy under the run's smoothing noise (--noise-sigma), or PGD accuracy (--select
robust)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import Dist, all_reduce
from ..models import Classifier, save_checkpoint
from ..runtime import progress
from .batches import autocast, to_device
from .config import TrainConfig
from .robust import robust_accuracy
from .state import TrainState

VALID_NOISE_SEED = 12_345  # the same noise draws every epoch, so epochs are compared on equal terms


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    cfg: TrainConfig,
    d: Dist,
    noise_sigma: float = 0.0,
) -> dict:
    """Loss and accuracy over the loader (summed over ranks); with `noise_sigma`, of the images plus
    seeded Gaussian noise of that std, unclipped, as randomized smoothing adds it."""
    model.eval()
    loss_sum = correct = n = 0.0
    gen = torch.Generator(device=device).manual_seed(VALID_NOISE_SEED + d.rank)
    for batch in progress(loader, desc="valid"):
        if batch is None:
            continue
        x, y = to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
        if noise_sigma:
            x = x + torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype) * noise_sigma
        with autocast(device, cfg):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = all_reduce([loss_sum, correct, n], d, device)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": int(n)}


def _robust_valid(
    model: Classifier, loader: DataLoader, device: torch.device, cfg: TrainConfig, d: Dist
) -> float:
    """PGD accuracy on the validation split at the training eps (the metric of --select robust)."""
    correct = n = 0.0
    for batch in progress(loader, desc="robust valid"):
        if batch is None:
            continue
        x, y = to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
        correct += robust_accuracy(model, x, y, cfg.adv.eps, steps=max(cfg.adv.steps, 5)) * len(y)
        n += len(y)
    correct, n = all_reduce([correct, n], d, device)
    return correct / max(n, 1)


def validate(model: Classifier, loader: DataLoader, cfg: TrainConfig, device: torch.device, d: Dist) -> dict:
    """Loss and accuracy on the validation split (under the smoothing noise when training with
    --noise-sigma: what the smoothed classifier votes with), and PGD accuracy at the training eps for
    --select robust."""
    valid = evaluate_loader(model, loader, device, cfg, d, cfg.augment.noise_sigma)
    if cfg.adv.select == "robust":
        valid["robust_accuracy"] = _robust_valid(model, loader, device, cfg, d)
    return valid


def keep_if_best(
    state: TrainState, valid: dict, epoch: int, model: Classifier, out: Path, meta: dict, write: bool
) -> bool:
    """Record the epoch's score in `state`; if it is the best so far, save the checkpoint (when `write`)."""
    improved = state.record(valid.get("robust_accuracy", valid["accuracy"]), epoch)
    if improved and write:
        metrics = {f"valid_{k}": v for k, v in valid.items() if k != "n"}
        save_checkpoint(model, out, {**meta, "metrics": {**metrics, "epoch": epoch}})
    return improved
