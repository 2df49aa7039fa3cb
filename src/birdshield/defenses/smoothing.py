"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing"): PREDICT with abstention and CERTIFY with a Clopper-Pearson bound. The dataset driver and its
report are in `birdshield.evaluation.certify`.

The smoothed classifier is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I). If the top class has
probability pA >= pA_lower > 1/2, g is constant within the L2 ball of radius sigma * Phi^-1(pA_lower).

Units: noise and radii are in pixel units of [0,1] images (normalisation is inside the model), measured on
the model's input tensor (image_size x image_size after resizing), not on the original file.

Noise is added without clipping to [0,1]: Cohen et al. certify the pure Gaussian model, and so do we.
(Clipping would still give a valid certificate, being part of the base classifier f, but birdshield keeps
the textbook setting.) `train --noise-sigma` (and `--preset smoothing`) adds the same unclipped noise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..attacks.base import generator

ABSTAIN = -1


# ------------------------------------------------------------------------------------------ statistics
# scipy.stats is imported inside the functions: it costs ~0.6 s, which every other command would pay.


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from n_a of n successes."""
    from scipy.stats import beta

    if not 0 <= n_a <= n or n < 1:
        raise ValueError(f"need 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(p_lower: float, sigma: float) -> float | None:
    """sigma * Phi^-1(pA_lower), or None (abstain) when pA_lower < 1/2."""
    from scipy.stats import norm

    return None if p_lower < 0.5 else sigma * float(norm.ppf(p_lower))


def _top2_significant(counts: Tensor, alpha: float) -> bool:
    """PREDICT's test: is the top class's share of the top-2 votes significantly above 1/2 (two-sided)?"""
    from scipy.stats import binomtest

    top2 = counts.topk(min(2, counts.numel())).values.tolist() + [0]
    n_a, n_b = int(top2[0]), int(top2[1])
    return binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha


# ------------------------------------------------------------------------------------------ classifier


class Smoothed:
    """The smoothed version of a classifier `model` ([0,1] images in, logits out) at noise level `sigma`.

    Noise samples of one image are drawn in batches of `batch_size` (one forward per batch) from a local,
    seeded generator, so results are reproducible and the global RNG is untouched.
    """

    def __init__(self, model: nn.Module, sigma: float, batch_size: int = 100) -> None:
        check_params(n=1, alpha=0.5, sigma=sigma, batch_size=batch_size)
        self.model, self.sigma, self.batch_size = model, float(sigma), int(batch_size)
        names = getattr(model, "class_names", None)
        self.num_classes: int | None = len(names) if names else None  # else learnt from the first logits
        # A model without parameters is an ONNX session: it takes contiguous NCHW arrays (anything else
        # is copied); torch models get the channels_last view of the NHWC draws.
        self._contiguous_input = isinstance(model, nn.Module) and next(model.parameters(), None) is None
        self._buffers: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A batch-sized buffer reused for every batch and image: a fresh 60 MB tensor per batch costs
        page faults (the allocator returns it to the OS and maps it again) and noise draws into it."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _votes(
        self, x: Tensor, sizes: Sequence[int], gen: torch.Generator, stop: StopRule | None = None
    ) -> list[Tensor]:
        """Votes of the base model on x + noise: one count vector per size, each from its own fresh draws.

        Drawing all sizes in one stream lets CERTIFY's n0 and n samples share forward batches. `stop`, given
        the counts of the first sizes and the last size's counts so far, ends the draws early (the last
        count vector then sums to fewer than its size).
        """
        total = sum(sizes)
        preds = torch.empty(total, dtype=torch.long, device=x.device)
        c, h, w = x.shape
        done = 0
        with torch.inference_mode():
            noise = self._buffer("noise", (self.batch_size, h, w, c), x)
            while done < total:
                b = min(self.batch_size, total - done)
                # drawn as NHWC and viewed as NCHW: a channels_last batch without a copy (faster convs)
                drawn = torch.randn((b, h, w, c), generator=gen, out=noise[:b]).permute(0, 3, 1, 2)
                if self._contiguous_input:  # the same numbers, written once in NCHW order
                    nchw = self._buffer("nchw", (self.batch_size, c, h, w), x)[:b]
                    batch = torch.mul(drawn, self.sigma, out=nchw).add_(x)
                else:
                    batch = drawn.mul_(self.sigma).add_(x)
                logits = self.model(batch)
                self.num_classes = self.num_classes or logits.shape[1]
                preds[done : done + b] = logits.argmax(1)
                done += b
                if stop is not None and done >= total - sizes[-1] and stop(self._counts(preds[:done], sizes)):
                    break
        return self._counts(preds[:done], sizes)

    def _counts(self, preds: Tensor, sizes: Sequence[int]) -> list[Tensor]:
        """Count vectors per size of the predictions drawn so far (the last may be short)."""
        bounds = [0]
        for size in sizes:
            bounds.append(min(bounds[-1] + size, len(preds)))
        minlength = self.num_classes or 1
        return [torch.bincount(preds[a:b], minlength=minlength).cpu() for a, b in itertools.pairwise(bounds)]

    def predict(self, x: Tensor, n: int, alpha: float, seed: int = 0) -> tuple[Tensor, Tensor]:
        """PREDICT for a batch (N, 3, H, W): (classes with ABSTAIN = -1, vote counts (N, classes)).

        A class is returned only when a two-sided binomial test on the top-2 counts rejects a tie at level
        alpha, so the answer differs from g(x) with probability at most alpha.
        """
        check_params(n=n, alpha=alpha)
        counts = torch.stack([self._votes(img, [n], generator(x, seed + i))[0] for i, img in enumerate(x)])
        classes = [int(c.argmax()) if _top2_significant(c, alpha) else ABSTAIN for c in counts]
        return torch.tensor(classes, dtype=torch.long), counts

    def certify(
        self, x: Tensor, n0: int, n: int, alpha: float, seed: int = 0, min_radius: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """CERTIFY for a batch (N, 3, H, W): (classes with ABSTAIN = -1, L2 radii; NaN where abstained).

        n0 samples pick the candidate class, n fresh samples bound its probability from below. With
        `min_radius`, an image stops drawing (and abstains) as soon as its bound could not reach that
        radius even if every remaining sample voted for the candidate: abstaining early never gives a
        certificate the full n would not, so the guarantee is unchanged, and hopeless images cost little.
        """
        classes, radii, _ = self.certify_with_votes(x, n0, n, alpha, seed, min_radius)
        return classes, radii

    def certify_with_votes(
        self, x: Tensor, n0: int, n: int, alpha: float, seed: int = 0, min_radius: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`certify`, plus the vote counts (N, classes) of the samples that bounded the probability (what
        the page shows as the vote; fewer than n where an image stopped early)."""
        check_params(n=n, alpha=alpha, n0=n0)
        needed = required_votes(n, alpha, self.sigma, min_radius)
        classes, radii, votes = [], [], []
        for i, img in enumerate(x):  # image i's noise is seeded with seed + i, whatever the others draw
            counts0, counts = self._votes(img, [n0, n], generator(x, seed + i), _hopeless(n, needed))
            c_a = int(counts0.argmax())
            radius = None
            if int(counts.sum()) == n:  # not stopped early
                radius = certified_radius(lower_confidence_bound(int(counts[c_a]), n, alpha), self.sigma)
            classes.append(ABSTAIN if radius is None else c_a)
            radii.append(math.nan if radius is None else radius)
            votes.append(counts)
        votes_t = torch.stack(votes) if votes else torch.zeros(0, self.num_classes or 0, dtype=torch.long)
        return torch.tensor(classes, dtype=torch.long), torch.tensor(radii, dtype=torch.float64), votes_t


StopRule = Callable[[list[Tensor]], bool]


def required_votes(n: int, alpha: float, sigma: float, radius: float) -> int:
    """The fewest votes of n for the candidate class that certify `radius` (n + 1: none can)."""
    if radius <= 0:
        return 0
    from scipy.stats import norm

    target = float(norm.cdf(radius / sigma))
    low, high = 0, n + 1  # binary search: the bound grows with the votes
    while low < high:
        mid = (low + high) // 2
        if mid <= n and lower_confidence_bound(mid, n, alpha) >= target:
            high = mid
        else:
            low = mid + 1
    return low


def _hopeless(n: int, needed: int) -> StopRule | None:
    """Stop once the candidate (the n0 draws' winner) cannot reach `needed` votes of n even if every
    draw left goes its way."""
    if needed <= 0:
        return None

    def stop(counts: list[Tensor]) -> bool:
        selection, votes = counts
        drawn, candidate = int(votes.sum()), int(selection.argmax())
        return int(votes[candidate]) + (n - drawn) < needed

    return stop


def check_params(*, n: int, alpha: float, n0: int = 1, sigma: float = 1.0, batch_size: int = 1) -> None:
    """ValueError naming the first bad smoothing parameter (before any work, not after)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 1 or n0 < 1:
        raise ValueError(f"need n >= 1 and n0 >= 1 noise samples, got n={n}, n0={n0}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
