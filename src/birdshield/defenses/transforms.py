"""Input-transformation defences (JPEG re-compression, bit-depth reduction, median filter) that stay honest
under gradient attacks.

Each transform is non-differentiable (or nearly flat), which makes a naive gradient attack fail and the
defence look strong: gradient masking. Following Athalye, Carlini & Wagner 2018 ("Obfuscated Gradients Give
a False Sense of Security"), every transform's forward is the real transform while its backward is the
identity (BPDA, straight-through), and randomised transforms are attacked through `EOT`, which averages
logits over several random draws. `Defended(model, transform)` is then an ordinary model: any attack in
`birdshield.attacks` run on it is already adaptive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..attacks.corruptions import jpeg as jpeg_round_trip
from .specs import DEFENSES, MAX_MEDIAN_KERNEL, PARAM_RANGES


class InputTransform(nn.Module):
    """A fixed preprocessing step on [0,1] images whose gradient is the identity (BPDA) by default.

    bpda=False gives the zero gradient a non-differentiable pipeline offers an attacker; it exists only
    to show gradient masking and must not be used to report robustness.
    """

    def __init__(self, bpda: bool = True) -> None:
        super().__init__()
        self.bpda = bpda

    def transform(self, x: Tensor) -> Tensor:
        """The real transform (no gradient needed)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            t = self.transform(x.detach())
        if not (torch.is_grad_enabled() and x.requires_grad):
            return t
        # x - x.detach() is exactly 0, so the value is exactly t while d out / d x is the identity (or 0).
        return t + (x - x.detach()) if self.bpda else t + 0 * x

    def extra_repr(self) -> str:
        return f"bpda={self.bpda}"


class JPEG(InputTransform):
    """PIL JPEG encode/decode of each image at `quality`, or at a random quality in (low, high) per image
    and per call (then attack it through `EOT`)."""

    def __init__(self, quality: int | tuple[int, int] = 75, *, seed: int = 0, bpda: bool = True) -> None:
        super().__init__(bpda)
        low, high = (quality, quality) if isinstance(quality, int) else quality
        if not PARAM_RANGES["jpeg"][0] <= low <= high <= PARAM_RANGES["jpeg"][1]:
            raise ValueError(f"JPEG quality must be in 1..95 (low <= high), got {quality}")
        self.quality = (int(low), int(high))
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def random(self) -> bool:
        return self.quality[0] != self.quality[1]

    def transform(self, x: Tensor) -> Tensor:
        low, high = self.quality
        if not self.random:
            return jpeg_round_trip(x, quality=low)
        qualities = torch.randint(low, high + 1, (x.shape[0],), generator=self.gen).tolist()
        return torch.cat([jpeg_round_trip(x[i : i + 1], quality=q) for i, q in enumerate(qualities)])

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bpda={self.bpda}"


class BitDepth(InputTransform):
    """Rounds each channel to 2**bits levels (Xu et al. 2018, feature squeezing); 8 bits leaves 8-bit images
    (any image read from a file) unchanged."""

    def __init__(self, bits: int = 4, *, bpda: bool = True) -> None:
        super().__init__(bpda)
        if not PARAM_RANGES["bits"][0] <= bits <= PARAM_RANGES["bits"][1]:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        self.bits = int(bits)

    def transform(self, x: Tensor) -> Tensor:
        levels = 2**self.bits - 1
        return (x.clamp(0, 1) * levels).round() / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bpda={self.bpda}"


class MedianFilter(InputTransform):
    """Per-channel median over a kernel x kernel window, borders reflected; kernel 1 is the identity.

    The windows take kernel**2 times an image's memory, so the kernel is at most MAX_MEDIAN_KERNEL and
    a batch is filtered one image at a time."""

    def __init__(self, kernel: int = 3, *, bpda: bool = True) -> None:
        super().__init__(bpda)
        if not 1 <= kernel <= MAX_MEDIAN_KERNEL or kernel % 2 == 0:
            raise ValueError(f"median kernel must be an odd size in 1..{MAX_MEDIAN_KERNEL}, got {kernel}")
        self.kernel = int(kernel)

    def transform(self, x: Tensor) -> Tensor:
        k = self.kernel
        if k == 1:
            return x.clone()
        return torch.cat([self._median(image, k) for image in x.split(1)])

    @staticmethod
    def _median(x: Tensor, k: int) -> Tensor:
        padded = nn.functional.pad(x, (k // 2,) * 4, mode="reflect")
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # (1, C, H, W, k, k), copied by flatten
        return windows.flatten(-2).median(dim=-1).values

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, bpda={self.bpda}"


class _ModelWrapper(nn.Module):
    """Wraps a birdshield model and passes on what predict/evaluate read from it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def image_size(self) -> int:
        return self.model.image_size


class Defended(_ModelWrapper):
    """`model(transform(x))`, usable wherever a model is: predict, evaluate, every attack (BPDA built in)."""

    def __init__(self, model: nn.Module, transform: nn.Module) -> None:
        super().__init__(model)
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.transform(x))

    @property
    def meta(self) -> dict:
        return {**self.model.meta, "defense": repr(self.transform)}


class EOT(_ModelWrapper):
    """Expectation over Transformation: logits averaged over `samples` forwards of a randomised model, so a
    gradient attack follows the expected loss rather than one random draw."""

    def __init__(self, model: nn.Module, samples: int = 8) -> None:
        super().__init__(model)
        if samples < 1:
            raise ValueError(f"EOT needs samples >= 1, got {samples}")
        self.samples = int(samples)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


TRANSFORMS: dict[str, type[InputTransform]] = {"jpeg": JPEG, "bits": BitDepth, "median": MedianFilter}


def make_transform(name: str, param: float | None = None) -> InputTransform:
    """The transform called `name` ("jpeg", "bits", "median") with its one parameter (default if None)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown input transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    value = DEFENSES[name][1] if param is None else param
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name}: {DEFENSES[name][0]} must be a whole number, got {value}")
    return TRANSFORMS[name](int(value))
