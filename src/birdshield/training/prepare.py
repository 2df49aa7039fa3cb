"""Everything a run needs before its first epoch, in one named context (`Run`): the data, the model in
place, the optimiser, the weight average, the teacher, the resumed state. `loop.fit` then only iterates."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from timm.models import group_parameters
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import data
from ..distributed import Dist
from ..models import CheckpointError, Classifier, create_model, load_checkpoint
from .average import WeightAverage
from .batches import make_loader, to_device
from .config import TrainConfig
from .features import cache_root
from .optim import make_optimizer
from .probe import probe_on_cached_features
from .resume import RESUME_FILE, load_resume
from .robust import Teacher
from .state import TrainState
from .validation import evaluate_loader, keep_if_best, validate

# From this many training images on, `fast_cpu="auto"` trains only the probe on a CPU: fine-tuning the
# last blocks over BIRDS-525's 84,635 photos would take hours on a laptop (see benchmarks/bench_scale.py).
FAST_CPU_MIN_IMAGES = 10_000

# Options that change what a run computes are fingerprinted for --resume; these only say where and how fast.
_NOT_FINGERPRINTED = ("out", "resume", "device", "workers", "feature_cache", "strict")


@dataclass
class Run:
    """A prepared run: what the epoch loop reads and updates."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    log: Callable[[str], None]
    model: Classifier  # the weights being trained (and what crafts adversarial examples)
    net: nn.Module  # what is optimised: `model`, or its DistributedDataParallel wrapper
    kept: Classifier  # what is validated and saved: `model`, or its weight average
    opt: torch.optim.Optimizer
    average: WeightAverage | None
    teacher: Teacher | None
    train_ds: data.ImageDataset | data.DecodedImages
    valid_ds: data.ImageDataset | data.DecodedImages
    train_loader: DataLoader  # made once: its workers live for the whole run
    valid_loader: DataLoader
    meta: dict[str, Any]  # birdshield.json beside the model (metrics are added per checkpoint)
    fingerprint: str  # of the options and images: a resume must match it
    state: TrainState
    epochs: int
    overfit_batch: tuple[Tensor, Tensor] | None  # fast FGSM's catastrophic-overfitting probe

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def prepare(
    cfg: TrainConfig, d: Dist, device: torch.device, log: Callable[[str], None], dataset: data.Dataset
) -> Run:
    """Build the run: model, data, optimiser; the probe's warm start on a fresh run, the saved state on
    a resumed one. `dataset` is the discovered data set (its test split is never read here)."""
    torch.manual_seed(cfg.seed)
    cfg = _fast_cpu(cfg, device, len(dataset.splits["train"]), log)
    model = create_model(dataset.class_names, arch=cfg.arch, weights=cfg.weights, image_size=cfg.image_size)
    train_ds, valid_ds = (_images(dataset.splits[s], model.image_size, cfg, device, d, log) for s in SPLITS)
    log(
        f"{dataset.layout} layout, {len(dataset.class_names)} classes, "
        f"{len(train_ds)} train / {len(valid_ds)} valid images at {model.image_size}px; "
        f"{cfg.arch}, depth {cfg.depth}, on {device} x{d.world}"
    )
    train_loader, valid_loader = make_loader(train_ds, cfg, d, True), make_loader(valid_ds, cfg, d, False)
    _place(model, cfg, device)
    meta = _checkpoint_meta(cfg, dataset)
    fingerprint = run_fingerprint(cfg, dataset)

    resume_path = Path(cfg.out) / RESUME_FILE
    resuming = cfg.resume and resume_path.is_file()
    if cfg.resume and not resuming:
        log(f"--resume: no {resume_path} yet, starting from scratch")
    # The probe's cache holds plain (flipped) images, so with other augmentation it would not see what
    # training sees; an adversarial fine-tune is warm-started from it anyway: from a random head it learns
    # next to nothing for epochs (measured: 0.3% adversarial training accuracy after one epoch).
    cached_probe = cfg.probe_epochs > 0 and (
        cfg.augment.only_flips or (cfg.adv.active and cfg.depth != "probe")
    )
    state = TrainState()
    if cached_probe and not resuming:  # the probed head is epoch 0: fine-tuning must beat it to replace it
        probed = probe_on_cached_features(model, train_ds, valid_ds, cfg, device, log, d, cfg.augment.hflip)
        valid = validate(model, valid_loader, cfg, device, d) if cfg.adv.select == "robust" else probed
        keep_if_best(state, valid, 0, model, Path(cfg.out), meta, d.main)
    epochs = 0 if cfg.depth == "probe" and cached_probe else cfg.epochs
    # A probed head is already good: fine-tune it at the backbone's gentle rate, or it drags the features.
    opt = make_optimizer(model, cfg, head_lr=cfg.backbone_lr if cached_probe else cfg.lr)
    # With weight averaging the average is what is validated and kept; it starts from the probed head.
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 and epochs else None
    if resuming:
        state = _resume(resume_path, model, opt, average, fingerprint)
        log(f"resumed from {resume_path} after epoch {state.epoch}")
    teacher = _load_teacher(cfg, dataset.class_names, valid_loader, device, d, log) if cfg.teacher else None
    return Run(
        cfg=cfg,
        d=d,
        device=device,
        log=log,
        model=model,
        net=_ddp(model, device) if d.world > 1 and epochs else model,
        kept=average.model if average else model,
        opt=opt,
        average=average,
        teacher=teacher,
        train_ds=train_ds,
        valid_ds=valid_ds,
        train_loader=train_loader,
        valid_loader=valid_loader,
        meta=meta,
        fingerprint=fingerprint,
        state=state,
        epochs=epochs,
        overfit_batch=_overfit_probe(train_ds, cfg, device) if cfg.adv.method == "fgsm" else None,
    )


SPLITS = ("train", "valid")


def _images(
    samples: list[data.Sample], size: int, cfg: TrainConfig, device: torch.device, d: Dist, log: Callable
) -> data.ImageDataset | data.DecodedImages:
    """A split's images as the loader reads them: decoded once into a uint8 cache, or decoded by the
    loader's workers every epoch. On a GPU the cache ("auto") keeps the model fed; on a CPU the model is
    the bottleneck and decoding costs little next to it."""
    if cfg.decode_cache == "off" or (cfg.decode_cache == "auto" and device.type != "cuda"):
        return data.ImageDataset(samples, size, strict=cfg.strict)
    folder = cache_root(kind="decoded")
    folder = folder / f"rank{d.rank}" if d.world > 1 else folder  # no two processes write one file
    images = data.DecodedImages(samples, size, folder, workers=max(cfg.workers, 2) * 2, strict=cfg.strict)
    log(f"input pipeline: {len(samples)} images decoded once at {size}px into {images.folder}")
    return images


def _fast_cpu(
    cfg: TrainConfig, device: torch.device, n_train: int, log: Callable[[str], None]
) -> TrainConfig:
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
    if not (cfg.fast_cpu == "on" or auto):
        return cfg
    why = "--fast-cpu on" if cfg.fast_cpu == "on" else f"{n_train} images on a CPU"
    log(
        f"fast CPU path ({why}): a linear probe on cached features of the frozen backbone, no "
        "fine-tuning, no flipped views; --fast-cpu off fine-tunes (hours on a large data set)"
    )
    return replace(cfg, depth="probe", augment=replace(cfg.augment, hflip=False))


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


def _place(model: Classifier, cfg: TrainConfig, device: torch.device) -> None:
    """Freeze what does not train and move the model to the device in its memory layout."""
    _set_trainable(model, cfg.depth)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _checkpoint_meta(cfg: TrainConfig, dataset: data.Dataset) -> dict[str, Any]:
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


def run_fingerprint(cfg: TrainConfig, dataset: data.Dataset) -> str:
    """A digest of what a run computes from: its options (not where it runs) and the contents of its train
    and valid images with their labels. Paths enter relative to the data root, so a moved copy of the
    same data still resumes."""
    h = hashlib.sha256()
    options = {k: v for k, v in asdict(cfg).items() if k not in _NOT_FINGERPRINTED and k != "data"}
    h.update(json.dumps(_jsonable(options), sort_keys=True).encode())
    h.update(json.dumps(dataset.class_names).encode())
    for split in ("train", "valid"):
        for s in dataset.splits[split]:
            line = f"{split}\0{_relative(s.path, dataset.root)}\0{s.label}\0"
            h.update(line.encode(errors="surrogateescape"))  # a file name that is not UTF-8: its bytes
            h.update(_file_digest(s.path))
    return h.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _file_digest(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:  # an unreadable file is skipped by training; its absence is what is fingerprinted
        return b"unreadable"


def _resume(
    path: Path, model: Classifier, opt: torch.optim.Optimizer, average: WeightAverage | None, fingerprint: str
) -> TrainState:
    try:
        saved = load_resume(path, model, opt, average)
    except (RuntimeError, ValueError, KeyError) as e:  # another model, class set or optimiser
        raise CheckpointError(
            f"{path}: cannot resume it with these options ({str(e)[:200]}); "
            "resume with the run's original options, or train into a new --out"
        ) from e
    if saved.pop("fingerprint", fingerprint) != fingerprint:  # (runs saved before fingerprints: trusted)
        raise CheckpointError(
            f"{path}: saved by a run with other options or other images (train/valid files or labels "
            "differ); resume with the run's original options and data, or train into a new --out"
        )
    return TrainState(**saved)


def _load_teacher(
    cfg: TrainConfig,
    class_names: list[str],
    valid_loader: DataLoader,
    device: torch.device,
    d: Dist,
    log: Callable[[str], None],
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
    valid = evaluate_loader(teacher, valid_loader, device, cfg, d)
    log(f"teacher {cfg.teacher}: {valid['accuracy']:.1%} on the validation split")
    return teacher


def _ddp(model: Classifier, device: torch.device) -> nn.Module:
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _overfit_probe(
    train_ds: data.ImageDataset, cfg: TrainConfig, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A fixed batch of training images for the catastrophic-overfitting check of fast FGSM training."""
    batch = data.collate_skip_bad([train_ds[i] for i in range(0, len(train_ds), max(1, len(train_ds) // 64))])
    if batch is None:  # every sampled image unreadable: the first 64 readable ones instead
        readable = (item for item in map(train_ds.__getitem__, range(len(train_ds))) if item is not None)
        batch = data.collate_skip_bad(list(itertools.islice(readable, 64)))
    if batch is None:
        raise data.DataError("no readable training image (every file of the train split is unreadable)")
    return to_device(batch[0], device, cfg.channels_last), batch[1].to(device)
