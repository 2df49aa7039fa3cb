"""Exact binomial intervals for accuracies measured on few images (torch-free; scipy loads on first use).

150 test photos give a 95% interval about 16 points wide at 50% accuracy: every accuracy birdshield
reports carries its n and a Clopper-Pearson interval, so nobody reads a 3-point difference as real.
"""

from __future__ import annotations


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval of a success probability from k successes in n trials."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import beta

    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def ci95(k: int, n: int) -> list[float]:
    """[low, high] of the 95% Clopper-Pearson interval, rounded for reports (finely enough that a report
    shown to 0.1% rounds once: 0.95945 must read 95.9%, not 96.0% via 0.9595)."""
    return [round(v, 6) for v in clopper_pearson(int(k), int(n))]


def format_count(k: int, n: int) -> str:
    """A count with its accuracy and 95% interval, as the docs quote counts: "169/180 93.9% (89.3-96.9)"."""
    if n == 0:
        return "0/0"
    low, high = ci95(k, n)
    return f"{k}/{n} {k / n:.1%} ({100 * low:.1f}-{100 * high:.1f})"


def ci95_of(accuracy: float, n: int) -> list[float]:
    """The interval of an accuracy stated as a fraction of n images (for reports written without one)."""
    return ci95(round(accuracy * n), n)


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value for two models scored on the same images: `gained` images only the
    second gets right, `lost` only the first. Images both get right or wrong carry no evidence, which is why
    a paired test sees differences that two overlapping intervals hide."""
    if gained < 0 or lost < 0:
        raise ValueError(f"need counts >= 0, got {gained} and {lost}")
    if gained + lost == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(gained, gained + lost, 0.5).pvalue)
