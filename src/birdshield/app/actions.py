"""What the page does, as plain functions: a photo in, predictions, attacks and certificates out.

No gradio here: photos come in as PIL images, images go out as uint8 numpy arrays (H, W, 3) and tables as
lists, so every panel is testable without a browser. Each function answers for every served model, so a
standard and a robust model can be compared side by side.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

import birdshield

from .. import data
from ..attack_io import check_target
from ..attacks.base import quantise_in_ball
from ..attacks.registry import ATTACK_SPECS, get_spec
from ..defenses.smoothing import ABSTAIN, Smoothed
from ..inference import Top, inference_logits, predict_tensor
from ..runtime import model_device

MAX_UPLOAD_MB = 10.0
MB = 2**20  # bytes; Gradio's own upload limit counts in these units too
TOP_K = 5
IMAGENET_BIRDS_NAME = "ImageNet birds (not trained on your data)"


@dataclass
class Served:
    """A model the page serves: the title of its column, the model, and its measured forward time per
    image (for the time estimates shown before long jobs)."""

    name: str
    model: nn.Module
    seconds_per_image: float = 0.0


def load_models(run_dirs: Sequence[str | Path], device: str = "auto") -> list[Served]:
    """The runs to serve, each timed once; with none, the offline ImageNet backbone's bird classes."""
    if not run_dirs:
        return [calibrated(Served(IMAGENET_BIRDS_NAME, birdshield.load(None, device=device)))]
    names = [Path(r).name or str(r) for r in run_dirs]
    names = [str(r) if names.count(n) > 1 else n for n, r in zip(names, run_dirs, strict=True)]
    return [
        calibrated(Served(n, birdshield.load(r, device=device))) for n, r in zip(names, run_dirs, strict=True)
    ]


def calibrated(served: Served, batch: int = 8) -> Served:
    """`served` with seconds_per_image measured on one batch (after a one-image warm-up)."""
    model = served.model
    x = torch.rand(batch, 3, model.image_size, model.image_size, device=model_device(model))
    inference_logits(model, x[:1])
    start = time.perf_counter()
    inference_logits(model, x)
    served.seconds_per_image = (time.perf_counter() - start) / batch
    return served


def page_attacks(served: Sequence[Served]) -> list[str]:
    """Attacks that need nothing but the attacked model (no surrogate), in the registry's order."""
    classes = min(len(s.model.class_names) for s in served)
    return [
        name
        for name, spec in ATTACK_SPECS.items()
        if "surrogate" not in spec.options and spec.min_classes <= classes
    ]


# ------------------------------------------------------------------------------------------ photos


def read_photo(
    path: str | Path, max_mb: float = MAX_UPLOAD_MB, max_pixels: int = data.MAX_PIXELS
) -> Image.Image:
    """An uploaded file decoded to RGB, or BadImageError saying why it cannot be used (too large in bytes
    or pixels, empty, truncated, corrupt, not an image). Decoding is `data.read_rgb`: the pixel limit is
    checked from the header before any pixel is decoded."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # read_rgb names the problem
    if size > max_mb * MB:
        raise data.BadImageError(path, f"file too large ({size / MB:.1f} MB; the limit is {max_mb:g} MB)")
    return data.read_rgb(path, max_pixels)


def photo_error(e: data.BadImageError) -> str:
    """One line for the page: the file's own name (not the server's upload path) and the reason."""
    return f"Cannot use {e.path.name or 'this file'}: {e.reason}"


def _as_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def model_view(model: nn.Module, photo: Image.Image) -> np.ndarray:
    """The photo as the model sees it: shorter side resized to its input size, centre crop."""
    return _as_uint8(data.to_tensor(photo, model.image_size))


def _batch(model: nn.Module, photo: Image.Image) -> Tensor:
    return data.to_tensor(photo, model.image_size)[None].to(model_device(model))


# ------------------------------------------------------------------------------------------ predict


def predict_image(
    served: Sequence[Served], photo: Image.Image, *, top_k: int = TOP_K, defense: object = None
) -> list[Top]:
    """Top-k (species, confidence) of each model, best first; `defense` is an input transform from
    `defenses.make_defense` applied before every model (smoothing has its own function below)."""
    return [predict_tensor(s.model, _batch(s.model, photo), top_k=top_k, defense=defense)[0] for s in served]


def transformed_view(model: nn.Module, photo: Image.Image, defense: object) -> np.ndarray:
    """The photo as the model sees it after an input transform (unchanged without one)."""
    x = data.to_tensor(photo, model.image_size)[None]
    return _as_uint8((defense(x) if defense is not None else x)[0])


# ------------------------------------------------------------------------------------------ attack


@dataclass
class AttackOutcome:
    """An attack on one model, and every model's answer on the resulting 8-bit image."""

    original: np.ndarray  # the attacked model's view of the photo, uint8 (H, W, 3)
    perturbation: np.ndarray  # adversarial - original, magnified so its largest change is mid-grey +- 127
    adversarial: np.ndarray  # the 8-bit adversarial image: the exact pixels every model judged
    magnification: float  # how much `perturbation` is magnified (0 when nothing changed)
    label: str  # untargeted: the class attacked (the model's clean prediction); targeted: the target
    targeted: bool
    predictions: list[Top]  # each model's top-k on `adversarial`
    linf: float  # largest change of a pixel value, in [0, 1] units
    l2: float  # L2 norm of the change, in [0, 1] units on the attacked model's input size
    seconds: float  # the attack's own time
    fooled: bool  # the attacked model's answer on `adversarial` moved off the label (or onto the target)

    def png(self) -> bytes:
        """The adversarial image as lossless PNG."""
        buf = io.BytesIO()
        Image.fromarray(self.adversarial).save(buf, format="PNG")
        return buf.getvalue()


def attack_image(
    served: Sequence[Served],
    photo: Image.Image,
    *,
    attack: str,
    eps: float,
    attacked: int = 0,
    norm: str = "linf",
    steps: int | None = None,
    target: str | None = None,
    seed: int = 0,
    early_stop: bool = False,
) -> AttackOutcome:
    """Attack served[attacked] with `attack` (a registry name) at radius eps (pixel units of [0,1]).

    Untargeted, the attack moves the image off the model's own clean prediction. `steps` is the attack's
    iterations (Square: queries); None is its default. The result is rounded to 8 bits inside the ball
    (attacks.base.quantise_in_ball), and every model judges those pixels: a model
    with another input size sees the adversarial image resized like any photo. ValueError for a norm
    the attack lacks, an unknown target or an attack that cannot be targeted.
    """
    spec = get_spec(attack)
    if norm not in spec.norms:
        raise ValueError(f"{attack} attacks {' and '.join(spec.norms)} only, not {norm}")
    model = served[attacked].model
    check_target(attack, target, model.class_names)
    x = _batch(model, photo)
    y = inference_logits(model, x).argmax(1)
    target_t = None if target is None else torch.tensor([model.class_names.index(target)], device=x.device)
    budget = {"n_queries" if "n_queries" in spec.options else "steps": steps}
    options = spec.kwargs(eps, norm=norm, target=target_t, seed=seed, early_stop=early_stop, **budget)
    start = time.perf_counter()
    x_adv = spec.load()(model, x, y, **options)
    seconds = time.perf_counter() - start
    adv = quantise_in_ball(x, x_adv, eps, norm)[0]
    adversarial = _as_uint8(adv)
    predictions = predict_image(served, Image.fromarray(adversarial))
    label = target or model.class_names[int(y)]
    answer = predictions[attacked][0][0]
    delta = adv - x[0]
    return AttackOutcome(
        original=_as_uint8(x[0]),
        perturbation=_magnified(delta),
        adversarial=adversarial,
        magnification=_magnification(delta),
        label=label,
        targeted=target is not None,
        predictions=predictions,
        linf=float(delta.abs().max()),
        l2=float(delta.norm()),
        seconds=seconds,
        fooled=answer == target if target else answer != label,
    )


def _magnification(delta: Tensor) -> float:
    biggest = float(delta.abs().max())
    return 0.0 if biggest == 0 else 0.5 / biggest


def _magnified(delta: Tensor) -> np.ndarray:
    """The change as an image: mid-grey is no change, the largest change reaches black or white."""
    return _as_uint8(0.5 + delta * _magnification(delta))


# ------------------------------------------------------------------------------------------ smoothing


@dataclass
class Certificate:
    """Randomized smoothing's answer for one model (Cohen et al.'s CERTIFY)."""

    prediction: str | None  # None: abstained (the vote cannot be shown to exceed 1/2 at alpha)
    radius: float | None  # certified L2 radius in [0,1] pixel units; None when abstained
    votes: Top  # top classes by share of the n noisy votes, best first
    n: int
    seconds: float


def smoothing_seconds(served: Sequence[Served], n: int, n0: int = 100) -> float:
    """Expected time to certify one image with every model: (n0 + n) forwards each."""
    return sum(s.seconds_per_image * (n0 + n) for s in served)


def certify_image(
    served: Sequence[Served],
    photo: Image.Image,
    *,
    sigma: float,
    n: int,
    n0: int = 100,
    alpha: float = 0.001,
    seed: int = 0,
    top_k: int = TOP_K,
    batch_size: int = 100,
) -> list[Certificate]:
    """Certify the photo under each model smoothed with Gaussian noise of std sigma (pixel units): n0
    samples pick the class, n fresh samples bound its probability at level alpha. Each model's measured
    forward time is updated from the run, so the next estimate is closer."""
    out = []
    for s in served:
        start = time.perf_counter()
        smoothed = Smoothed(s.model, sigma, batch_size=batch_size)
        classes, radii, votes = smoothed.certify_with_votes(_batch(s.model, photo), n0, n, alpha, seed)
        seconds = time.perf_counter() - start
        s.seconds_per_image = seconds / (n0 + n)
        names = s.model.class_names
        shares = votes[0].double() / n
        top = [(names[j], float(shares[j])) for j in shares.topk(min(top_k, len(names))).indices.tolist()]
        cls, radius = int(classes[0]), float(radii[0])
        abstained = cls == ABSTAIN
        out.append(
            Certificate(
                prediction=None if abstained else names[cls],
                radius=None if abstained or math.isnan(radius) else radius,
                votes=top,
                n=n,
                seconds=seconds,
            )
        )
    return out
