"""Training augmentation: per-image randomness, identities at zero strength, noise in pixel units."""

from __future__ import annotations

import torch

from birdshield.training.augment import augment, random_affine
from birdshield.training.config import AugmentConfig


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_strength_affine_is_the_identity():
    x = torch.rand(4, 3, 20, 20)
    torch.testing.assert_close(random_affine(x, AugmentConfig(), _g()), x, atol=1e-5, rtol=0)


def test_flips_are_drawn_per_image():
    x = torch.rand(64, 3, 8, 8)
    out = augment(x, AugmentConfig(hflip=True), _g())
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    assert 10 < flipped.sum() < 54  # about half
    assert all(torch.equal(o, xi) for o, xi, f in zip(out, x, flipped, strict=True) if not f)


def test_geometric_augmentation_changes_images_and_is_seeded():
    x = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig(hflip=False, rotate=20, shift=0.1, shear=10, zoom=0.1)
    a, b = augment(x, cfg, _g(1)), augment(x, cfg, _g(1))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_noise_is_in_pixel_units_and_random_per_image():
    x = torch.full((256, 3, 16, 16), 0.5)
    fixed = augment(x, AugmentConfig(hflip=False, noise_sigma=0.1), _g()) - x
    assert abs(fixed.std().item() - 0.1) < 0.005
    per_image = (augment(x, AugmentConfig(hflip=False, noise_max=0.2), _g()) - x).flatten(1).std(1)
    assert per_image.min() < 0.03 and per_image.max() > 0.17  # std ~ U(0, 0.2) per image


def test_smoothing_noise_is_unclipped_but_noise_max_is_clipped():
    x = torch.ones(8, 3, 16, 16)
    assert augment(x, AugmentConfig(hflip=False, noise_sigma=0.25), _g()).max() > 1
    assert augment(x, AugmentConfig(hflip=False, noise_max=0.25), _g()).max() <= 1
