"""The training loop: augment, optimise, validate, keep the best checkpoint, stop early, resume.

One process on CPU or one GPU; under `torchrun --nproc_per_node=N` the same loop runs with
DistributedDataParallel (gloo on CPU, nccl on CUDA) and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import data
from .augment import AugmentConfig, augment
from .defenses.adversarial import AdvConfig, adversarial_loss, robust_accuracy
from .models import DEFAULT_ARCH, CheckpointError, Classifier, create_model, save_checkpoint
from .reporting.plots import plot_training_curves
from .runtime import atomic_write_bytes, pick_device, progress, tune_cpu_allocator

RESUME_FILE = "resume.safetensors"


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = DEFAULT_ARCH
    weights: str | None = "imagenet"
    image_size: int | None = None
    depth: str = "last-2"  # "probe" (head only), "last-N" (last N block groups + head) or "full"
    probe_epochs: int = 30  # cached linear-probe epochs that warm-start the head (0: off)
    epochs: int = 6
    patience: int = 5
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 2e-3  # head
    backbone_lr: float = 2e-4
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    workers: int = 2
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    resume: bool = False


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg.device)
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def _all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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


def _optimizer(model: Classifier, cfg: TrainConfig, head_lr: float) -> torch.optim.Optimizer:
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


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor


def _loader(ds: data.ImageDataset, cfg: TrainConfig, d: Dist, shuffle: bool, epoch: int = 0) -> DataLoader:
    indices = list(range(len(ds)))
    if shuffle:
        g = torch.Generator().manual_seed(
            cfg.seed * 100_003 + epoch
        )  # a fresh order per epoch, same on resume
        indices = torch.randperm(len(ds), generator=g).tolist()
    return DataLoader(
        Subset(ds, indices[d.rank :: d.world]),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=data.collate_skip_bad,
        pin_memory=torch.cuda.is_available(),
    )


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, cfg: TrainConfig):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainConfig, d: Dist
) -> dict:
    model.eval()
    loss_sum = correct = n = 0.0
    for batch in progress(loader, desc="valid"):
        if batch is None:
            continue
        x, y = _to(batch[0], device, cfg.channels_last), batch[1].to(device)
        with _autocast(device, cfg):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = _all_reduce([loss_sum, correct, n], d, device)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": int(n)}


def _robust_valid(
    model: Classifier, loader: DataLoader, device: torch.device, cfg: TrainConfig, d: Dist
) -> float:
    """PGD accuracy on the validation split at the training eps (the metric of --select robust)."""
    correct = n = 0.0
    for batch in progress(loader, desc="robust valid"):
        if batch is None:
            continue
        x, y = _to(batch[0], device, cfg.channels_last), batch[1].to(device)
        correct += robust_accuracy(model, x, y, cfg.adv.eps, steps=max(cfg.adv.steps, 5)) * len(y)
        n += len(y)
    correct, n = _all_reduce([correct, n], d, device)
    return correct / max(n, 1)


def _overfit_probe(train_ds: data.ImageDataset, cfg: TrainConfig, device: torch.device):
    """A fixed batch of training images for the catastrophic-overfitting check of fast FGSM training."""
    batch = data.collate_skip_bad([train_ds[i] for i in range(0, len(train_ds), max(1, len(train_ds) // 64))])
    return _to(batch[0], device, cfg.channels_last), batch[1].to(device)


@torch.inference_mode()
def _features(model: Classifier, loader: DataLoader, device: torch.device, cfg: TrainConfig, flips: bool):
    model.eval()
    feats, labels = [], []
    for batch in progress(loader, desc="caching features"):
        if batch is None:
            continue
        x = _to(batch[0], device, cfg.channels_last)
        for view in (x, x.flip(-1)) if flips else (x,):
            with _autocast(device, cfg):
                feats.append(model.forward_features(view).float())
            labels.append(batch[1].to(device))
    return torch.cat(feats), torch.cat(labels)


def _probe_on_cached_features(model: Classifier, train_ds, valid_ds, cfg: TrainConfig, device, log) -> None:
    """Fit the linear head on cached backbone features: an epoch costs milliseconds, not minutes.

    Every rank computes the same head from the same data, so DDP needs no communication here.
    """
    xtr, ytr = _features(model, _loader(train_ds, cfg, Dist(), False), device, cfg, flips=cfg.augment.hflip)
    xva, yva = _features(model, _loader(valid_ds, cfg, Dist(), False), device, cfg, flips=False)
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


# --- resume state: one safetensors file (tensors) with the JSON state in its header, written atomically ---


def _save_resume(path: Path, model: Classifier, opt: torch.optim.Optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            elif value is not None:
                scalars.setdefault(str(idx), {})[name] = value
    state = {**state, "param_groups": opt_state["param_groups"], "optim_scalars": scalars}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"state": json.dumps(state)}))


def _load_resume(path: Path, model: Classifier, opt: torch.optim.Optimizer) -> dict:
    with safetensors.safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    tensors = safetensors.torch.load_file(str(path))
    model.backbone.load_state_dict(
        {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
    )
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for idx, entry in state.pop("optim_scalars").items():
        per_param.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state


def _write_history(out: Path, history: list[dict]) -> None:
    header = list(history[0])
    rows = [
        ",".join(f"{h[k]:.6g}" if isinstance(h[k], float) else str(h[k]) for k in header) for h in history
    ]
    atomic_write_bytes(out / "history.csv", ("\n".join([",".join(header), *rows]) + "\n").encode())
    plot_training_curves(history, out / "curves.png")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def train(cfg: TrainConfig) -> dict:
    """Train, keep the best-validation checkpoint in `cfg.out`, and return a summary of the run."""
    tune_cpu_allocator()
    d, device = _setup(cfg)
    out = Path(cfg.out)
    log = print if d.main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)

    dataset = data.discover(cfg.data, seed=cfg.seed)
    if not dataset.splits["train"] or not dataset.splits["valid"]:
        raise data.DataError(f"{cfg.data}: training needs images in both the train and the valid split")
    model = create_model(dataset.class_names, arch=cfg.arch, weights=cfg.weights, image_size=cfg.image_size)
    train_ds = data.ImageDataset(dataset.splits["train"], model.image_size, strict=cfg.strict)
    valid_ds = data.ImageDataset(dataset.splits["valid"], model.image_size, strict=cfg.strict)
    log(
        f"{dataset.layout} layout, {len(dataset.class_names)} classes, "
        f"{len(train_ds)} train / {len(valid_ds)} valid images at {model.image_size}px; "
        f"{cfg.arch}, depth {cfg.depth}, on {device} x{d.world}"
    )

    _set_trainable(model, cfg.depth)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    meta = {
        "training": _jsonable(asdict(cfg)),
        "trained_against": {
            "adversarial": cfg.adv.summary(),
            "noise_max": cfg.augment.noise_max,
            "noise_sigma": cfg.augment.noise_sigma,
        },
        "dataset": {"root": str(dataset.root), "layout": dataset.layout},
    }
    resume_path = out / RESUME_FILE
    resuming = cfg.resume and resume_path.is_file()
    cached_probe = cfg.augment.only_flips and cfg.probe_epochs > 0
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}

    def validate() -> dict:
        valid = evaluate_loader(model, _loader(valid_ds, cfg, d, False), device, cfg, d)
        if cfg.adv.select == "robust":
            valid["robust_accuracy"] = _robust_valid(model, _loader(valid_ds, cfg, d, False), device, cfg, d)
        return valid

    def keep_if_best(valid: dict, epoch: int) -> bool:
        score = valid.get("robust_accuracy", valid["accuracy"])
        improved = score > state["best_score"]
        state.update(bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best_score=score, best_epoch=epoch)
            if d.main:
                metrics = {f"valid_{k}": v for k, v in valid.items() if k != "n"}
                save_checkpoint(model, out, {**meta, "metrics": {**metrics, "epoch": epoch}})
        return improved

    if cached_probe and not resuming:  # the probed head is epoch 0: fine-tuning must beat it to replace it
        _probe_on_cached_features(model, train_ds, valid_ds, cfg, device, log)
        keep_if_best(validate(), 0)
    epochs = 0 if cfg.depth == "probe" and cached_probe else cfg.epochs
    # A probed head is already good: fine-tune it at the backbone's gentle rate, or it drags the features.
    opt = _optimizer(model, cfg, head_lr=cfg.backbone_lr if cached_probe else cfg.lr)
    if resuming:
        try:
            state = _load_resume(resume_path, model, opt)
        except (RuntimeError, ValueError, KeyError) as e:  # another model, class set or optimiser
            raise CheckpointError(
                f"{resume_path}: cannot resume it with these options ({str(e)[:200]}); "
                "resume with the run's original options, or train into a new --out"
            ) from e
        log(f"resumed from {resume_path} after epoch {state['epoch']}")
    elif cfg.resume:
        log(f"--resume: no {resume_path} yet, starting from scratch")

    net: nn.Module = model
    if d.world > 1 and epochs:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    steps_per_epoch = math.ceil(len(train_ds) / d.world / cfg.batch_size)
    total_steps, warmup_steps = epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    gen = torch.Generator(device=device)
    probe = _overfit_probe(train_ds, cfg, device) if cfg.adv.method == "fgsm" else None

    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["bad_epochs"] >= cfg.patience:
            break
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout etc.: reproducible per epoch, also after resume
        gen.manual_seed(cfg.seed * 1000 + epoch)
        _train_mode(net, pretrained=cfg.weights is not None)
        loss_sum = correct = n = 0.0
        for i, batch in enumerate(progress(_loader(train_ds, cfg, d, True, epoch), desc=f"epoch {epoch}")):
            if batch is None:
                continue
            _set_lr(opt, lr_factor((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps))
            x, y = _to(batch[0], device, cfg.channels_last), batch[1].to(device)
            x = augment(x, cfg.augment, gen)
            eps = cfg.adv.eps_at(epoch - 1 + i / steps_per_epoch)
            with _autocast(device, cfg):
                loss, logits = adversarial_loss(
                    net,
                    model,
                    x,
                    y,
                    cfg.adv,
                    eps,
                    seed=epoch * 100_003 + i,
                    label_smoothing=cfg.label_smoothing,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        loss_sum, correct, n = _all_reduce([loss_sum, correct, n], d, device)
        valid = validate()
        row = {
            "epoch": epoch,
            "lr": opt.param_groups[-1]["lr"],
            "train_loss": loss_sum / max(n, 1),
            "train_accuracy": correct / max(n, 1),
            "valid_loss": valid["loss"],
            "valid_accuracy": valid["accuracy"],
        }
        if "robust_accuracy" in valid:
            row["valid_robust_accuracy"] = valid["robust_accuracy"]
        if probe is not None:
            row["train_pgd_accuracy"] = robust_accuracy(model, *probe, cfg.adv.eps, steps=10)
        row["seconds"] = round(time.time() - t0, 2)
        state["history"].append(row)
        if _overfitting(state["history"]):  # checked first, so an overfitted epoch is never kept as best
            log("catastrophic overfitting: PGD accuracy on training images collapsed (Wong et al. 2020)")
            break
        improved = keep_if_best(valid, epoch)
        state["epoch"] = epoch
        if d.main:
            _save_resume(resume_path, model, opt, state)
            _write_history(out, state["history"])
        log(
            f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.1%}  "
            f"valid loss {row['valid_loss']:.3f} acc {row['valid_accuracy']:.1%}"
            + (f" robust {row['valid_robust_accuracy']:.1%}" if "valid_robust_accuracy" in row else "")
            + f"  {row['seconds']:.0f}s"
            + ("  *best*" if improved else "")
        )
    if state["bad_epochs"] >= cfg.patience:
        log(f"early stop: no better validation score for {cfg.patience} epochs")
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    log(f"best validation score {state['best_score']:.1%} (epoch {state['best_epoch']}), saved in {out}")
    return {"run_dir": str(out), "best_epoch": state["best_epoch"], "valid_score": state["best_score"]}


def _overfitting(history: list[dict], drop: float = 0.2) -> bool:
    """Catastrophic overfitting of fast adversarial training: PGD accuracy on a fixed training batch falls
    by more than `drop` below its best so far, while the FGSM training accuracy keeps rising."""
    pgd_acc = [h["train_pgd_accuracy"] for h in history if "train_pgd_accuracy" in h]
    return len(pgd_acc) >= 2 and pgd_acc[-1] < max(pgd_acc[:-1]) - drop


# Named recipes for `birdshield train --preset NAME`: (what it is, option defaults it sets).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "original": (
        "the original project's noise + geometric augmentation, Adam, patience 5",
        {
            "noise_max": 0.1,
            "rotate": 20,
            "shift": 0.1,
            "shear": 10,
            "zoom": 0.1,
            "optimizer": "adam",
            "depth": "last-4",
            "epochs": 10,
        },
    ),
    "robust-cpu": (
        "PGD-3 adversarial training at Linf 4/255 on 160 px inputs (half the cost of 224), eps warm-up, "
        "full fine-tune, robust selection",
        {
            "image_size": 160,
            "adv_method": "pgd",
            "adv_eps": 4 / 255,
            "adv_steps": 3,
            "adv_warmup_epochs": 2,
            "depth": "full",
            "epochs": 20,
            "patience": 6,
            "select": "robust",
            "label_smoothing": 0.0,
        },
    ),
    "smoothing": (
        "Gaussian noise of sigma 0.25: the base model of randomized smoothing (certify --sigma 0.25)",
        {"noise_sigma": 0.25, "depth": "full", "epochs": 8},
    ),
}
