"""What a training run does, as plain dataclasses. No torch here: the CLI builds its parser from them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_ARCH = "tf_efficientnet_lite0"  # models.DEFAULT_ARCH (not imported: models loads torch)
METHODS = ("none", "pgd", "fgsm", "trades")


@dataclass
class AugmentConfig:
    hflip: bool = True
    rotate: float = 0.0  # max degrees
    shift: float = 0.0  # max fraction of the image size
    shear: float = 0.0  # max degrees
    zoom: float = 0.0  # max fractional zoom in or out
    noise_max: float = 0.0  # per-image Gaussian std drawn uniformly from [0, noise_max] (pixel units)
    noise_sigma: float = 0.0  # fixed Gaussian std for every image (randomized-smoothing training)

    @property
    def geometric(self) -> bool:
        return any((self.rotate, self.shift, self.shear, self.zoom))

    @property
    def only_flips(self) -> bool:
        """True when augmented features can be cached: at most two versions of each image exist."""
        return not (self.geometric or self.noise_max or self.noise_sigma)


@dataclass
class AdvConfig:
    method: str = "none"  # none | pgd | fgsm (FGSM from a random start) | trades
    eps: float = 0.0  # Linf radius in pixel units of [0,1] images
    steps: int = 3  # attack steps per batch (pgd, trades); fgsm is one step
    step_size: float | None = None  # default: eps/2 for pgd and trades, 1.25*eps for fgsm (Wong et al.)
    warmup_epochs: float = 0.0  # eps grows linearly from 0 over these epochs
    clean_weight: float = 0.0  # loss = (1 - w) * adversarial + w * clean (pgd, fgsm)
    trades_beta: float = 6.0
    select: str = "clean"  # best checkpoint by "clean" or "robust" validation accuracy (PGD at eps)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"adversarial method must be one of {METHODS}, got {self.method!r}")
        if self.method != "none" and self.eps <= 0:
            raise ValueError(f"adversarial training with {self.method} needs --adv-eps > 0")
        if self.select not in ("clean", "robust"):
            raise ValueError(f"select must be 'clean' or 'robust', got {self.select!r}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def eps_at(self, epoch_progress: float) -> float:
        """eps after `epoch_progress` epochs (fractional), with the linear warm-up."""
        if self.warmup_epochs <= 0:
            return self.eps
        return self.eps * min(1.0, epoch_progress / self.warmup_epochs)

    def summary(self) -> dict:
        """What the model was trained against, as recorded in birdshield.json."""
        if not self.active:
            return {"method": "none"}
        return {
            "method": self.method,
            "norm": "linf",
            "eps": self.eps,
            "steps": 1 if self.method == "fgsm" else self.steps,
            "clean_weight": self.clean_weight,
            **({"beta": self.trades_beta} if self.method == "trades" else {}),
        }


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = DEFAULT_ARCH
    weights: str | None = "imagenet"
    image_size: int | None = None
    depth: str = "last-2"  # "probe" (head only), "last-N" (last N block groups + head) or "full"
    probe_epochs: int = 30  # cached linear-probe epochs that warm-start the head (0: off)
    feature_cache: str = ""  # the probe's feature caches ("": $BIRDSHIELD_CACHE or ~/.cache/birdshield)
    fast_cpu: str = "auto"  # auto | on | off: the cached probe alone, for large data sets on a CPU
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
    ema_decay: float = 0.0  # validate and keep a moving average of the weights (0: the raw weights)
    teacher: str = ""  # run of the same classes whose predictions are distilled; or an AUTO_TEACHERS name
    tta_flip: bool = False  # the saved model averages its logits over the image and its mirror image
    consistency: float = 0.0  # weight of the consistency loss under the smoothing noise (0: off)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    workers: int = 2
    decode_cache: str = "auto"  # auto | on | off: decode images once into a uint8 cache (auto: on a GPU)
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    resume: bool = False

    def __post_init__(self) -> None:
        if self.decode_cache not in ("auto", "on", "off"):
            raise ValueError(f"decode_cache must be 'auto', 'on' or 'off', got {self.decode_cache!r}")
        if self.consistency < 0:
            raise ValueError(f"consistency must be >= 0, got {self.consistency}")
        if self.consistency and (self.augment.noise_sigma <= 0 or self.adv.active):
            raise ValueError(
                "--consistency regularises noise training: it needs --noise-sigma > 0 and no --adv"
            )

    @classmethod
    def from_preset(cls, name: str, data: str, out: str, **options: Any) -> TrainConfig:
        """A named recipe (see PRESETS); explicit `options` (flat names, see FLAT_FIELDS) win over it."""
        if name not in PRESETS:
            raise ValueError(f"unknown training preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
        return config_from_options(data, out, **{**PRESETS[name].overrides, **options})


# --- flat option names: one namespace for the CLI, presets and Python callers ---

# Adversarial fields the CLI names with an `adv_` prefix (--adv, --adv-eps, ...); the others keep their name.
_ADV_PREFIXED = ("method", "eps", "steps", "step_size", "warmup_epochs")


def _flat_fields() -> dict[str, str]:
    flat = {f.name: f.name for f in fields(TrainConfig) if f.name not in ("data", "out", "augment", "adv")}
    flat.update({f.name: f"augment.{f.name}" for f in fields(AugmentConfig)})
    for f in fields(AdvConfig):
        flat[f"adv_{f.name}" if f.name in _ADV_PREFIXED else f.name] = f"adv.{f.name}"
    return flat


# Flat option name (as `birdshield train` spells it, with underscores) -> field path in TrainConfig.
FLAT_FIELDS: dict[str, str] = _flat_fields()


def config_from_options(data: str, out: str, **options: Any) -> TrainConfig:
    """A TrainConfig from flat option names (FLAT_FIELDS); options left out keep their defaults."""
    for name in options:
        if name not in FLAT_FIELDS:
            close = difflib.get_close_matches(name, FLAT_FIELDS, n=1)
            raise ValueError(
                f"unknown training option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
    nested: dict[str, dict[str, Any]] = {"": {}, "augment": {}, "adv": {}}
    for name, value in options.items():
        group, _, field_name = FLAT_FIELDS[name].rpartition(".")
        nested[group][field_name] = value
    return TrainConfig(
        data, out, augment=AugmentConfig(**nested["augment"]), adv=AdvConfig(**nested["adv"]), **nested[""]
    )


# Teachers `--teacher NAME` trains first, into OUT/teacher, then distils. "standard" (the robust presets'):
# the default recipe (`birdshield train DATA`: Lite0 at 224 px, no noise), the more accurate clean model;
# "auto": noise training on the student's backbone. Cross-validated against each other in docs/results.md.
AUTO_TEACHERS: dict[str, dict[str, Any]] = {"auto": {"noise_max": 0.2}, "standard": {}}


def auto_teacher_config(cfg: TrainConfig) -> TrainConfig:
    """The config of `cfg`'s automatic teacher (`cfg.teacher` names it): same data, seed and machine;
    "auto" also keeps the student's backbone. Resumable."""
    shared = ["seed", "device", "workers", "strict", "feature_cache", "amp"]
    if cfg.teacher == "auto":
        shared += ["arch", "weights"]
    return config_from_options(
        cfg.data,
        f"{cfg.out}/teacher",
        **AUTO_TEACHERS[cfg.teacher],
        **{k: getattr(cfg, k) for k in shared},
        resume=True,
    )


def preset_defaults(name: str | None = None) -> dict[str, Any]:
    """Every flat option's default, with preset `name`'s overrides applied (what `train --preset` sets)."""
    cfg = TrainConfig.from_preset(name, "", "") if name else TrainConfig("", "")
    values = {}
    for flat, path in FLAT_FIELDS.items():
        value: Any = cfg
        for attr in path.split("."):
            value = getattr(value, attr)
        values[flat] = value
    return values


@dataclass(frozen=True)
class Preset:
    doc: str  # what the recipe is and when to choose it, for --help
    overrides: dict[str, Any]  # flat option name (FLAT_FIELDS) -> value; explicit options still win


# The adversarially trained model for a CPU: PGD-3 at Linf 4/255 (eps warmed up over 2 epochs) on Lite1 at
# 160 px, a full fine-tune distilled from the default recipe's model (trained first), a weight average,
# the checkpoint with the best PGD accuracy on the validation split, and mirror averaging in the saved model.
# How each choice was measured, and the recipes it replaced, are in docs/results.md.
ROBUST_CPU: dict[str, Any] = {
    "arch": "tf_efficientnet_lite1",
    "image_size": 160,
    "depth": "full",
    "epochs": 20,
    "patience": 6,
    "adv_method": "pgd",
    "adv_eps": 4 / 255,
    "adv_steps": 3,
    "adv_warmup_epochs": 2,
    "select": "robust",
    "label_smoothing": 0.0,
    "teacher": "standard",
    "ema_decay": 0.99,
    "backbone_lr": 5e-4,
    "tta_flip": True,
}

# Named recipes for `birdshield train --preset NAME` and TrainConfig.from_preset(NAME, ...).
PRESETS: dict[str, Preset] = {
    "original": Preset(
        "the original project's recipe: noise and geometric augmentation, Adam, patience 5. Holds up to "
        "noise, not to adversarial attacks",
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
    "robust-cpu": Preset(
        "the model that resists adversarial attacks, sized for a CPU: PGD adversarial training at Linf "
        "4/255 on Lite1 at 160 px, distilled from the default recipe's model (trained first), weight "
        "averaging, the most robust checkpoint, mirror averaging when it predicts (about 40 min for "
        "birds-mini on a 2-core CPU)",
        ROBUST_CPU,
    ),
    "robust-gpu": Preset(
        "robust-cpu scaled up for a GPU: Lite2 at 260 px, PGD-5, up to 30 epochs, bf16",
        {
            **ROBUST_CPU,
            "arch": "tf_efficientnet_lite2",
            "image_size": 260,
            "adv_steps": 5,
            "epochs": 30,
            "patience": 8,
        },
    ),
    "smoothing": Preset(
        "the base model of randomized smoothing at sigma 0.25 (`certify --sigma 0.25`): trained under that "
        "Gaussian noise; certifies small L2 radii (up to about 0.5) with the best clean accuracy",
        {"noise_sigma": 0.25, "depth": "full", "epochs": 8},
    ),
    "smoothing-0.5": Preset(
        "the base model of randomized smoothing at sigma 0.5 (`certify --sigma 0.5`): trained under that "
        "noise with consistency regularisation (two noisy copies per photo must agree); certifies radii up "
        "to about 1, at lower clean accuracy. Twice the memory of plain noise training (--consistency 0)",
        {"noise_sigma": 0.5, "depth": "full", "epochs": 16, "consistency": 10.0},
    ),
}
