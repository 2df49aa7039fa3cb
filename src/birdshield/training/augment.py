"""Batched training augmentation on [0,1] tensors: flips, random affine, Gaussian noise.

Each image gets its own random draw, and everything runs on the batch's device, so augmentation costs
little next to the forward pass and works the same on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _uniform(
    n: int, low: float, high: float, g: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def random_affine(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Rotate, shift, shear and zoom each image by its own random amount (reflection at the borders)."""
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -cfg.rotate, cfg.rotate, g, dev) * math.pi / 180
    shear = _uniform(n, -cfg.shear, cfg.shear, g, dev) * math.pi / 180
    scale = 1 / _uniform(n, 1 - cfg.zoom, 1 + cfg.zoom, g, dev)  # sampling grid scale is the inverse zoom
    tx, ty = (_uniform(n, -2 * cfg.shift, 2 * cfg.shift, g, dev) for _ in range(2))  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * scale, (-sin + torch.tan(shear) * cos) * scale, tx], 1),
            torch.stack([sin * scale, cos * scale, ty], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gaussian_noise(
    x: torch.Tensor, std: torch.Tensor | float, g: torch.Generator | None = None, clip: bool = True
) -> torch.Tensor:
    """x + N(0, std^2) per image (`std`: a float or one value per image), clipped to [0,1] if `clip`."""
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
    noisy = x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * std
    return noisy.clamp(0, 1) if clip else noisy


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    if cfg.hflip:
        flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if cfg.geometric:
        x = random_affine(x, cfg, g)
    if cfg.noise_max:
        x = gaussian_noise(x, _uniform(x.shape[0], 0, cfg.noise_max, g, x.device), g)
    if cfg.noise_sigma:  # unclipped, exactly the noise randomized smoothing certifies with
        x = gaussian_noise(x, cfg.noise_sigma, g, clip=False)
    return x
