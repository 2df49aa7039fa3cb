"""Epsilons as people write them ("4/255") and read them; pure Python, so the CLI parses without torch."""

from __future__ import annotations

from fractions import Fraction


def parse_eps(s: str | float) -> float:
    """Parse an epsilon written as "4/255", "0.0157" or "0"."""
    try:
        value = float(Fraction(str(s).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"cannot parse eps {s!r}; write e.g. '4/255' or '0.0157'") from err
    if value < 0:
        raise ValueError(f"eps must be >= 0, got {s!r}")
    return value


def format_eps(eps: float) -> str:
    """`parse_eps` reversed, for display: 4/255 rather than 0.01569 (grey levels are what people compare)."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"
