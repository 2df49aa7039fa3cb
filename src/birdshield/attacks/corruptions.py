"""Common corruptions (after Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations"): severities 1..5, seeded, non-differentiable, output in [0, 1].

Severity tables are milder than ImageNet-C's, tuned for ~224 px photos of birds: the aim is noise a
camera or a web pipeline plausibly adds, not images a person could no longer label. Severity 0 is
the identity. Each function also takes an explicit strength that overrides its severity.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .base import generator
from .registry import CORRUPTIONS

NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # additive Gaussian std in [0, 1] intensity units
SALT_PEPPER_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of pixels set to black or white
BLUR_SIGMA = (0.5, 1.0, 1.5, 2.0, 3.0)  # Gaussian blur sigma in pixels
JPEG_QUALITY = (60, 40, 25, 15, 8)  # PIL JPEG quality
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every pixel
CONTRAST_FACTOR = (0.6, 0.45, 0.3, 0.2, 0.1)  # deviations from the image mean are scaled by this


def _level(table: tuple[float, ...], severity: int) -> float:
    if not 1 <= severity <= len(table):
        raise ValueError(f"severity must be in 0..{len(table)}, got {severity}")
    return table[severity - 1]


def gaussian_noise(x: Tensor, severity: int = 1, *, seed: int = 0, std: float | None = None) -> Tensor:
    """Additive Gaussian noise of std ``NOISE_STD[severity - 1]`` (or ``std``), clipped to [0, 1]."""
    std = _level(NOISE_STD, severity) if std is None else std
    noise = torch.randn(x.shape, generator=generator(x, seed), device=x.device, dtype=x.dtype)
    return (x + std * noise).clamp(0, 1)


def salt_pepper(x: Tensor, severity: int = 1, *, seed: int = 0, amount: float | None = None) -> Tensor:
    """Impulse noise: a fraction ``amount`` of pixels (all channels) set to 0 or 1 with equal odds.

    The same seed hits nested pixel sets as severity grows, so damage only increases.
    """
    amount = _level(SALT_PEPPER_AMOUNT, severity) if amount is None else amount
    gen = generator(x, seed)
    shape = (x.shape[0], 1, *x.shape[2:])
    hit = torch.rand(shape, generator=gen, device=x.device) < amount
    white = torch.rand(shape, generator=gen, device=x.device) < 0.5
    return torch.where(hit, white.to(x.dtype), x)


def gaussian_blur(x: Tensor, severity: int = 1, *, seed: int = 0, sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur (radius 3 sigma, replicated borders); ``seed`` unused."""
    sigma = _level(BLUR_SIGMA, severity) if sigma is None else sigma
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return out.clamp(0, 1)


def jpeg(x: Tensor, severity: int = 1, *, seed: int = 0, quality: int | None = None) -> Tensor:
    """Re-encode every image with PIL's JPEG at ``JPEG_QUALITY[severity - 1]``; ``seed`` unused."""
    quality = int(_level(JPEG_QUALITY, severity)) if quality is None else quality
    arr = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for img in arr:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buf, formats=["JPEG"]).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype) / 255


def brightness(x: Tensor, severity: int = 1, *, seed: int = 0, shift: float | None = None) -> Tensor:
    """Brighten by adding ``BRIGHTNESS_SHIFT[severity - 1]`` (or ``shift``), clipped; ``seed`` unused."""
    shift = _level(BRIGHTNESS_SHIFT, severity) if shift is None else shift
    return (x + shift).clamp(0, 1)


def contrast(x: Tensor, severity: int = 1, *, seed: int = 0, factor: float | None = None) -> Tensor:
    """Scale each image's deviation from its mean by ``CONTRAST_FACTOR[severity - 1]``; ``seed`` unused."""
    factor = _level(CONTRAST_FACTOR, severity) if factor is None else factor
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


_FUNCS: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "salt_pepper": salt_pepper,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
    "brightness": brightness,
    "contrast": contrast,
}  # keys in the order of registry.CORRUPTIONS (the torch-free list of names)


@torch.no_grad()
def corrupt(x: Tensor, name: str, severity: int = 1, seed: int = 0, **strength: float) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (0 = none, 1..5) to images ``x`` in [0, 1].

    ``strength`` overrides the severity table, e.g. ``corrupt(x, "gaussian_noise", std=0.05)``.
    """
    if name not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity == 0 and not strength:
        return x.clone()
    return _FUNCS[name](x.detach(), severity, seed=seed, **strength)
