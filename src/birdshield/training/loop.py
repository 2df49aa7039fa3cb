"""The training loop: augment, optimise, validate, keep the best checkpoint, stop early, resume.

One process on CPU or one GPU; under `torchrun --nproc_per_node=N` the same loop runs with
DistributedDataParallel (gloo on CPU, nccl on CUDA) and only rank 0 writes files.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader

from .. import data
from ..distributed import Dist, all_reduce, process_group
from ..models import CheckpointError, Classifier, create_model, load_checkpoint, save_checkpoint
from ..reporting.plots import plot_training_curves
from ..reporting.tables import csv_text
from ..runtime import atomic_write_bytes, progress, tune_cpu_allocator
from ..stats import ci95_of
from .augment import augment
from .average import WeightAverage
from .batches import autocast, make_loader, to_device
from .config import TrainConfig, auto_teacher_config
from .optim import lr_factor, make_optimizer, set_lr
from .probe import probe_on_cached_features
from .resume import RESUME_FILE, load_resume, save_resume
from .robust import Teacher, adversarial_loss, catastrophic_overfitting, robust_accuracy


def _set_trainable(model: Classifier, depth: str) -> None:
    """Freeze all but the last groups of parameters (timm's own stem → blocks → head grouping)."""
    groups = list(group_parameters(model.backbone, model.backbone.group_matcher(coarse=True)).values())
    if depth == "full":
        n = len(groups)
    elif depth == "probe":
        n = 1
    elif depth.startswith("last-") and depth[5:].isdigit():
        n = int(depth[5:]) + 1
    else:
        raise ValueError(f"depth must be 'probe', 'full' or 'last-N', got {depth!r}")
    trainable = {name for g in groups[-n:] for name in g}
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(name in trainable)


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


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainConfig, d: Dist
) -> dict:
    model.eval()
    loss_sum = correct = n = 0.0
    for batch in progress(loader, desc="valid"):
        if batch is None:
            continue
        x, y = to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
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


def _overfit_probe(train_ds: data.ImageDataset, cfg: TrainConfig, device: torch.device):
    """A fixed batch of training images for the catastrophic-overfitting check of fast FGSM training."""
    batch = data.collate_skip_bad([train_ds[i] for i in range(0, len(train_ds), max(1, len(train_ds) // 64))])
    if batch is None:  # every sampled image unreadable: the first 64 readable ones instead
        readable = (item for item in map(train_ds.__getitem__, range(len(train_ds))) if item is not None)
        batch = data.collate_skip_bad(list(itertools.islice(readable, 64)))
    if batch is None:
        raise data.DataError("no readable training image (every file of the train split is unreadable)")
    return to_device(batch[0], device, cfg.channels_last), batch[1].to(device)


def _write_history(out: Path, history: list[dict]) -> None:
    header = list(dict.fromkeys(k for h in history for k in h))  # rows of a resumed older run lack new keys
    rows = [
        [f"{h[k]:.6g}" if isinstance(h.get(k), float) else str(h.get(k, "")) for k in header] for h in history
    ]
    atomic_write_bytes(out / "history.csv", csv_text([header, *rows]).encode())
    plot_training_curves(history, out / "curves.png")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch: saved in the resume file, so --resume goes on."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (early stop at cfg.patience)
    history: list[dict] = field(default_factory=list)  # one row of history.csv per epoch

    def record(self, score: float, epoch: int) -> bool:
        """Count an epoch's validation score; True when it beats every earlier one."""
        improved = score > self.best_score
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if improved:
            self.best_score, self.best_epoch = score, epoch
        return improved


# From this many training images on, `fast_cpu="auto"` trains only the probe on a CPU: fine-tuning the
# last blocks over BIRDS-525's 84,635 photos would take hours on a laptop (see benchmarks/bench_scale.py).
FAST_CPU_MIN_IMAGES = 10_000


def _fast_cpu(cfg: TrainConfig, device: torch.device, n_train: int) -> TrainConfig:
    """The config to train with: the fast CPU path (cached probe of plain images, no fine-tuning) when
    chosen, `cfg` otherwise."""
    if cfg.fast_cpu not in ("auto", "on", "off"):
        raise ValueError(f"fast_cpu must be 'auto', 'on' or 'off', got {cfg.fast_cpu!r}")
    cacheable = cfg.augment.only_flips and not cfg.adv.active and cfg.probe_epochs > 0
    if cfg.fast_cpu == "on" and not cacheable:
        raise ValueError(
            "--fast-cpu on trains a probe on cached features: it excludes noise, geometric "
            "and adversarial training, and needs --probe-epochs > 0"
        )
    auto = cfg.fast_cpu == "auto" and device.type == "cpu" and n_train >= FAST_CPU_MIN_IMAGES and cacheable
    if cfg.fast_cpu == "on" or auto:
        return replace(cfg, depth="probe", augment=replace(cfg.augment, hflip=False))
    return cfg


def _discover(cfg: TrainConfig) -> data.Dataset:
    dataset = data.discover(cfg.data, seed=cfg.seed)
    if not dataset.splits["train"] or not dataset.splits["valid"]:
        raise data.DataError(f"{cfg.data}: training needs images in both the train and the valid split")
    return dataset


def _datasets(dataset: data.Dataset, size: int, strict: bool) -> tuple[data.ImageDataset, data.ImageDataset]:
    return (
        data.ImageDataset(dataset.splits["train"], size, strict=strict),
        data.ImageDataset(dataset.splits["valid"], size, strict=strict),
    )


def _place(model: Classifier, cfg: TrainConfig, device: torch.device) -> None:
    """Freeze what does not train and move the model to the device in its memory layout."""
    _set_trainable(model, cfg.depth)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)


def _checkpoint_meta(cfg: TrainConfig, dataset: data.Dataset) -> dict:
    """What birdshield.json records about the run beside the model (metrics are added per checkpoint)."""
    return {
        # set on the saved model only: training validates (and selects on) the single view
        "tta_flip": cfg.tta_flip,
        "training": _jsonable(asdict(cfg)),
        "trained_against": {
            "adversarial": cfg.adv.summary(),
            "noise_max": cfg.augment.noise_max,
            "noise_sigma": cfg.augment.noise_sigma,
        },
        "dataset": {"root": str(dataset.root), "layout": dataset.layout},
    }


def _resume(
    path: Path, model: Classifier, opt: torch.optim.Optimizer, average: WeightAverage | None
) -> TrainState:
    try:
        return TrainState(**load_resume(path, model, opt, average))
    except (RuntimeError, ValueError, KeyError) as e:  # another model, class set or optimiser
        raise CheckpointError(
            f"{path}: cannot resume it with these options ({str(e)[:200]}); "
            "resume with the run's original options, or train into a new --out"
        ) from e


def _load_teacher(
    cfg: TrainConfig, class_names: list[str], valid_ds: data.ImageDataset, device: torch.device, d: Dist, log
) -> Teacher:
    """The distillation teacher, checked to know the same species in the same order; logs its accuracy on
    the validation split as the student sees it (resized from the student's input size)."""
    model = load_checkpoint(cfg.teacher, device)
    if model.class_names != list(class_names):
        raise data.DataError(
            f"{cfg.teacher}: the teacher was trained on other species ({len(model.class_names)} classes, "
            f"this data set has {len(class_names)}); distil from a run trained on the same data set"
        )
    teacher = Teacher(model)
    valid = evaluate_loader(teacher, make_loader(valid_ds, cfg, d, False), device, cfg, d)
    log(f"teacher {cfg.teacher}: {valid['accuracy']:.1%} on the validation split")
    return teacher


def _ddp(model: Classifier, device: torch.device) -> nn.Module:
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


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


def train_one_epoch(
    net: nn.Module,
    model: Classifier,
    opt: torch.optim.Optimizer,
    train_ds: data.ImageDataset,
    cfg: TrainConfig,
    epoch: int,
    epochs: int,
    device: torch.device,
    d: Dist,
    average: WeightAverage | None = None,
    teacher: Teacher | None = None,
) -> dict:
    """One pass over this rank's share of the training split (epochs count from 1 of `epochs`).

    `net` is what is optimised (the DDP wrapper when distributed); `model` crafts adversarial examples;
    `average`, when given, follows `model`'s weights after every step; `teacher`'s predictions on the
    (augmented) clean images, when given, are the targets instead of the labels.
    Returns the mean training loss and accuracy over all ranks.
    """
    steps_per_epoch = math.ceil(len(train_ds) / d.world / cfg.batch_size)
    total_steps, warmup_steps = epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout etc.: reproducible per epoch, also after resume
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
    _train_mode(net, pretrained=cfg.weights is not None)
    loss_sum = correct = n = 0.0
    loader = make_loader(train_ds, cfg, d, True, epoch)
    for i, batch in enumerate(progress(loader, desc=f"epoch {epoch}")):
        if batch is None and d.world == 1:
            continue
        set_lr(opt, lr_factor((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps))
        if batch is None:  # the other ranks all-reduce this step's gradients: take part with none
            _zero_gradient_step(net, opt, train_ds.size, device, cfg)
            continue
        x, y = to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
        x = augment(x, cfg.augment, gen)
        eps = cfg.adv.eps_at(epoch - 1 + i / steps_per_epoch)
        with autocast(device, cfg):
            soft = teacher(x).float().softmax(1) if teacher is not None else None
            loss, logits = adversarial_loss(
                net, model, x, y, cfg.adv, eps, epoch * 100_003 + i, cfg.label_smoothing, soft
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            average.update(model, (epoch - 1) * steps_per_epoch + i)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = all_reduce([loss_sum, correct, n], d, device)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": int(n)}


def validate(
    model: Classifier, valid_ds: data.ImageDataset, cfg: TrainConfig, device: torch.device, d: Dist
) -> dict:
    """Loss and accuracy on the validation split, and PGD accuracy at the training eps for --select robust."""
    valid = evaluate_loader(model, make_loader(valid_ds, cfg, d, False), device, cfg, d)
    if cfg.adv.select == "robust":
        valid["robust_accuracy"] = _robust_valid(model, make_loader(valid_ds, cfg, d, False), device, cfg, d)
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


def train(cfg: TrainConfig) -> dict:
    """Train, keep the best-validation checkpoint in `cfg.out`, and return a summary of the run."""
    tune_cpu_allocator()
    with process_group(cfg.device) as (d, device):
        return _train(cfg, d, device)


def _train(cfg: TrainConfig, d: Dist, device: torch.device) -> dict:
    out, log = Path(cfg.out), print if d.main else _silent
    if cfg.teacher == "auto":  # trained first (or resumed, a no-op once finished), then distilled
        teacher_cfg = auto_teacher_config(cfg)
        log(f"--teacher auto: training the teacher in {teacher_cfg.out} first")
        _train(teacher_cfg, d, device)
        cfg = replace(cfg, teacher=teacher_cfg.out)
    torch.manual_seed(cfg.seed)

    dataset = _discover(cfg)
    fast = _fast_cpu(cfg, device, len(dataset.splits["train"]))
    if fast is not cfg:
        why = "--fast-cpu on" if cfg.fast_cpu == "on" else f"{len(dataset.splits['train'])} images on a CPU"
        log(
            f"fast CPU path ({why}): a linear probe on cached features of the frozen backbone, no "
            "fine-tuning, no flipped views; --fast-cpu off fine-tunes (hours on a large data set)"
        )
        cfg = fast
    model = create_model(dataset.class_names, arch=cfg.arch, weights=cfg.weights, image_size=cfg.image_size)
    train_ds, valid_ds = _datasets(dataset, model.image_size, cfg.strict)
    log(
        f"{dataset.layout} layout, {len(dataset.class_names)} classes, "
        f"{len(train_ds)} train / {len(valid_ds)} valid images at {model.image_size}px; "
        f"{cfg.arch}, depth {cfg.depth}, on {device} x{d.world}"
    )
    _place(model, cfg, device)
    meta = _checkpoint_meta(cfg, dataset)

    resume_path = out / RESUME_FILE
    resuming = cfg.resume and resume_path.is_file()
    # The probe's cache holds plain (flipped) images, so with other augmentation it would not see what
    # training sees; an adversarial fine-tune is warm-started from it anyway: from a random head it learns
    # next to nothing for epochs (measured: 0.3% adversarial training accuracy after one epoch).
    cached_probe = cfg.probe_epochs > 0 and (
        cfg.augment.only_flips or (cfg.adv.active and cfg.depth != "probe")
    )
    state = TrainState()
    if cached_probe and not resuming:  # the probed head is epoch 0: fine-tuning must beat it to replace it
        probed = probe_on_cached_features(model, train_ds, valid_ds, cfg, device, log, d, cfg.augment.hflip)
        valid = validate(model, valid_ds, cfg, device, d) if cfg.adv.select == "robust" else probed
        keep_if_best(state, valid, 0, model, out, meta, d.main)
    epochs = 0 if cfg.depth == "probe" and cached_probe else cfg.epochs
    # A probed head is already good: fine-tune it at the backbone's gentle rate, or it drags the features.
    opt = make_optimizer(model, cfg, head_lr=cfg.backbone_lr if cached_probe else cfg.lr)
    # With weight averaging the average is what is validated and kept; it starts from the probed head.
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 and epochs else None
    kept = average.model if average else model
    if resuming:
        state = _resume(resume_path, model, opt, average)
        log(f"resumed from {resume_path} after epoch {state.epoch}")
    elif cfg.resume:
        log(f"--resume: no {resume_path} yet, starting from scratch")
    net = _ddp(model, device) if d.world > 1 and epochs else model
    teacher = _load_teacher(cfg, dataset.class_names, valid_ds, device, d, log) if cfg.teacher else None
    overfit_batch = _overfit_probe(train_ds, cfg, device) if cfg.adv.method == "fgsm" else None

    for epoch in range(state.epoch + 1, epochs + 1):
        if state.bad_epochs >= cfg.patience:
            break
        t0 = time.time()
        trained = train_one_epoch(net, model, opt, train_ds, cfg, epoch, epochs, device, d, average, teacher)
        valid = validate(kept, valid_ds, cfg, device, d)
        row = _history_row(epoch, opt, trained, valid)
        if overfit_batch is not None:
            # averaged over ranks (their batch norm statistics differ): all must agree on stopping
            pgd_acc = robust_accuracy(model, *overfit_batch, cfg.adv.eps, steps=10)
            pgd_acc = all_reduce([pgd_acc], d, device)[0] / d.world
            row.update(_with_ci("train_pgd_accuracy", pgd_acc, len(overfit_batch[1])))
        row["seconds"] = round(time.time() - t0, 2)
        state.history.append(row)
        if catastrophic_overfitting(state.history):  # checked first: an overfitted epoch is never the best
            log("catastrophic overfitting: PGD accuracy on training images collapsed (Wong et al. 2020)")
            break
        improved = keep_if_best(state, valid, epoch, kept, out, meta, d.main)
        state.epoch = epoch
        if d.main:
            save_resume(resume_path, model, opt, asdict(state), average)
            _write_history(out, state.history)
        log(_epoch_line(row, epochs, improved))

    if state.bad_epochs >= cfg.patience:
        log(f"early stop: no better validation score for {cfg.patience} epochs")
    log(f"best validation score {state.best_score:.1%} (epoch {state.best_epoch}), saved in {out}")
    return {"run_dir": str(out), "best_epoch": state.best_epoch, "valid_score": state.best_score}
