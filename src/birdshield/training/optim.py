"""The optimiser (head and backbone at their own rates) and its schedule: linear warm-up, then cosine."""

from __future__ import annotations

import math

import torch

from ..models import Classifier
from .config import TrainConfig


def make_optimizer(model: Classifier, cfg: TrainConfig, head_lr: float) -> torch.optim.Optimizer:
    head = set(model.head.parameters())
    groups = [
        {"params": [p for p in head if p.requires_grad], "lr": head_lr},
        {
            "params": [p for p in model.parameters() if p.requires_grad and p not in head],
            "lr": cfg.backbone_lr,
        },
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer in ("adam", "adamw"):
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return opt_cls(groups, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
