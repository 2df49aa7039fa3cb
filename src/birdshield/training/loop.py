"""The training loop: augment, optimise, validate, keep the best checkpoint, stop early, resume.

`train(cfg)` prepares a run (`prepare.prepare`: data, model, optimiser, warm start or saved state) and
`fit` runs its epochs. One process on CPU or one GPU; under `torchrun --nproc_per_node=N` the same loop
runs with DistributedDataParallel (gloo on CPU, nccl on CUDA) and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from .. import data
from ..distributed import Dist, all_reduce, process_group
from ..reporting.plots import plot_training_curves
from ..reporting.tables import csv_text
from ..runtime import atomic_write_bytes, progress, tune_cpu_allocator
from ..stats import ci95_of
from .augment import augment
from .batches import autocast, to_device
from .config import AUTO_TEACHERS, TrainConfig, auto_teacher_config
from .optim import lr_factor, set_lr
from .prepare import Run, prepare
from .resume import RESUME_FILE, save_resume
from .robust import adversarial_loss, catastrophic_overfitting, consistency_loss, robust_accuracy
from .state import TrainState
from .validation import keep_if_best, validate

__all__ = ["TrainState", "fit", "train", "train_one_epoch"]


def train(cfg: TrainConfig, dataset: data.Dataset | None = None) -> dict:
    """Train, keep the best-validation checkpoint in `cfg.out`, and return a summary of the run.

    `dataset`: the splits to train on, instead of discovering `cfg.data` (cross-validation folds)."""
    tune_cpu_allocator()
    with process_group(cfg.device) as (d, device):
        return _train(cfg, d, device, dataset)


def _train(cfg: TrainConfig, d: Dist, device: torch.device, dataset: data.Dataset | None) -> dict:
    log = print if d.main else _silent
    dataset = dataset or _discover(cfg)
    if cfg.teacher in AUTO_TEACHERS:  # trained first (or resumed, a no-op once finished), then distilled
        teacher_cfg = auto_teacher_config(cfg)
        log(f"--teacher {cfg.teacher}: training the teacher in {teacher_cfg.out} first")
        _train(teacher_cfg, d, device, dataset)
        cfg = replace(cfg, teacher=teacher_cfg.out)
    return fit(prepare(cfg, d, device, log, dataset))


def fit(run: Run) -> dict:
    """The epochs: train, validate, keep the best, save the state to resume from, stop early."""
    cfg, state = run.cfg, run.state
    for epoch in range(state.epoch + 1, run.epochs + 1):
        if state.bad_epochs >= cfg.patience:
            break
        t0 = time.time()
        trained = train_one_epoch(run, epoch)
        valid = validate(run.kept, run.valid_loader, cfg, run.device, run.d)
        row = _history_row(epoch, run.opt, trained, valid) | _overfitting_check(run)
        row["seconds"] = round(time.time() - t0, 2)
        state.history.append(row)
        if catastrophic_overfitting(state.history):  # checked first: an overfitted epoch is never the best
            run.log("catastrophic overfitting: PGD accuracy on training images collapsed (Wong et al. 2020)")
            break
        improved = keep_if_best(state, valid, epoch, run.kept, run.out, run.meta, run.d.main)
        state.epoch = epoch
        if run.d.main:
            save_resume(run.out / RESUME_FILE, run.model, run.opt, _saved_state(run), run.average)
            _write_history(run.out, state.history)
        run.log(_epoch_line(row, run.epochs, improved))
    if state.bad_epochs >= cfg.patience:
        run.log(f"early stop: no better validation score for {cfg.patience} epochs")
    run.log(f"best validation score {state.best_score:.1%} (epoch {state.best_epoch}), saved in {run.out}")
    return {"run_dir": str(run.out), "best_epoch": state.best_epoch, "valid_score": state.best_score}


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One pass over this rank's share of the training split (epochs count from 1).

    `run.net` is optimised (the DDP wrapper when distributed); `run.model` crafts adversarial examples;
    the weight average, when there is one, follows `run.model` after every step; the teacher's predictions
    on the (augmented) clean images, when there is one, are the targets instead of the labels.
    Returns the mean training loss and accuracy over all ranks.
    """
    cfg, d, device = run.cfg, run.d, run.device
    steps_per_epoch = math.ceil(len(run.train_ds) / d.world / cfg.batch_size)
    total_steps, warmup_steps = run.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout etc.: reproducible per epoch, also after resume
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
    _train_mode(run.net, pretrained=cfg.weights is not None)
    # With the consistency loss the smoothing noise is drawn there, twice per image
    views = replace(cfg.augment, noise_sigma=0.0) if cfg.consistency else cfg.augment
    loss_sum = correct = n = 0.0
    run.train_loader.sampler.set_epoch(epoch)
    for i, batch in enumerate(progress(run.train_loader, desc=f"epoch {epoch}")):
        if batch is None and d.world == 1:
            continue
        step = (epoch - 1) * steps_per_epoch + i
        set_lr(run.opt, lr_factor(step, total_steps, warmup_steps))
        if batch is None:  # the other ranks all-reduce this step's gradients: take part with none
            _zero_gradient_step(run.net, run.opt, run.train_ds.size, device, cfg)
            continue
        x, y = to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
        x = augment(x, views, gen)
        with autocast(device, cfg):
            soft = run.teacher(x).float().softmax(1) if run.teacher is not None else None
            if cfg.consistency:
                loss, logits = consistency_loss(run.net, x, y, cfg, gen, soft)
            else:
                eps = cfg.adv.eps_at(epoch - 1 + i / steps_per_epoch)
                seed = epoch * 100_003 + i
                loss, logits = adversarial_loss(
                    run.net, run.model, x, y, cfg.adv, eps, seed, cfg.label_smoothing, soft
                )
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.average is not None:
            run.average.update(run.model, step)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = all_reduce([loss_sum, correct, n], d, device)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": int(n)}


def _discover(cfg: TrainConfig) -> data.Dataset:
    # The split of a folder or CUB tree is seeded apart from the training seed: `evaluate` and `certify`
    # must find the same test split whatever --seed trained the model, or test photos leak into training.
    dataset = data.discover(cfg.data)
    if not dataset.splits["train"] or not dataset.splits["valid"]:
        raise data.DataError(f"{cfg.data}: training needs images in both the train and the valid split")
    return dataset


def _train_mode(model: nn.Module, pretrained: bool) -> None:
    """Train mode, but pretrained batch norm keeps its running statistics (frozen layers' always).

    With a few hundred images, batch statistics of 32 images are noisier than the ImageNet ones and shift
    the features under a warm-started head (measured: valid accuracy fell 96% -> 91% after one epoch).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters())
            if pretrained or frozen:
                m.eval()


@contextmanager
def _batch_norm_frozen(net: nn.Module) -> Iterator[None]:
    """Batch norm in eval mode for the block: running statistics untouched."""
    training = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in training:
        m.eval()
    try:
        yield
    finally:
        for m in training:
            m.train()


def _zero_gradient_step(
    net: nn.Module, opt: torch.optim.Optimizer, size: int, device: torch.device, cfg: TrainConfig
) -> None:
    """The step of a DDP rank whose batch was all unreadable images: a blank image with its loss times 0.

    The forward and backward run DDP's collectives (buffer broadcast, gradient all-reduce) as a real step
    does, so the other ranks never wait on this one; its gradient is zero, and frozen batch norm keeps the
    blank image out of the running statistics.
    """
    x = to_device(torch.zeros(1, 3, size, size), device, cfg.channels_last)
    with _batch_norm_frozen(net), autocast(device, cfg):
        loss = net(x).float().sum() * 0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _overfitting_check(run: Run) -> dict:
    """Fast FGSM training's probe: PGD accuracy on a fixed training batch (empty for other recipes)."""
    if run.overfit_batch is None:
        return {}
    # averaged over ranks (their batch norm statistics differ): all must agree on stopping
    pgd_acc = robust_accuracy(run.model, *run.overfit_batch, run.cfg.adv.eps, steps=10)
    pgd_acc = all_reduce([pgd_acc], run.d, run.device)[0] / run.d.world
    return _with_ci("train_pgd_accuracy", pgd_acc, len(run.overfit_batch[1]))


def _saved_state(run: Run) -> dict:
    return {**asdict(run.state), "fingerprint": run.fingerprint}


def _write_history(out: Path, history: list[dict]) -> None:
    header = list(dict.fromkeys(k for h in history for k in h))  # rows of a resumed older run lack new keys
    rows = [
        [f"{h[k]:.6g}" if isinstance(h.get(k), float) else str(h.get(k, "")) for k in header] for h in history
    ]
    atomic_write_bytes(out / "history.csv", csv_text([header, *rows]).encode())
    plot_training_curves(history, out / "curves.png")


def _with_ci(name: str, accuracy: float, n: int) -> dict:
    """An accuracy column and its 95% interval: a few hundred images make noisy epochs."""
    low, high = ci95_of(accuracy, n)
    return {name: accuracy, f"{name}_ci95_low": low, f"{name}_ci95_high": high}


def _history_row(epoch: int, opt: torch.optim.Optimizer, trained: dict, valid: dict) -> dict:
    row = {
        "epoch": epoch,
        "lr": opt.param_groups[-1]["lr"],
        "train_loss": trained["loss"],
        "train_n": trained["n"],
        **_with_ci("train_accuracy", trained["accuracy"], trained["n"]),
        "valid_loss": valid["loss"],
        "valid_n": valid["n"],
        **_with_ci("valid_accuracy", valid["accuracy"], valid["n"]),
    }
    if "robust_accuracy" in valid:
        row.update(_with_ci("valid_robust_accuracy", valid["robust_accuracy"], valid["n"]))
    return row


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.1%}  "
        f"valid loss {row['valid_loss']:.3f} acc {row['valid_accuracy']:.1%}"
        + (f" robust {row['valid_robust_accuracy']:.1%}" if "valid_robust_accuracy" in row else "")
        + f"  {row['seconds']:.0f}s"
        + ("  *best*" if improved else "")
    )


def _silent(*args: object, **kwargs: object) -> None:
    pass
