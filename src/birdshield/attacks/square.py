"""Square Attack, Linf (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"). Score-based: it only reads the model's outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Attacked, attack_fn, generator, margin_loss, success

# Paper schedule for 10k queries: p is halved after each of these iterations (rescaled to n_queries).
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of pixels changed at iteration ``it``: p_init halved at the paper's milestones."""
    scaled = int(it / n_queries * 10000)
    return p_init / 2 ** sum(scaled > m for m in _P_HALVINGS)


def _signs(shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


def _propose(delta: Tensor, side: int, eps: float, gen: torch.Generator) -> Tensor:
    """Set a random side x side window of each image to a random +-eps colour (one sign per channel)."""
    m, c, h, w = delta.shape
    dev = delta.device
    top = torch.randint(0, h - side + 1, (m, 1), generator=gen, device=dev)
    left = torch.randint(0, w - side + 1, (m, 1), generator=gen, device=dev)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_h, in_w = (rows >= top) & (rows < top + side), (cols >= left) & (cols < left + side)
    window = (in_h[:, :, None] & in_w[:, None, :])[:, None]
    colour = eps * _signs((m, c, 1, 1), gen, delta)
    new = torch.where(window, colour, delta)
    for _ in range(10):  # a window already painted that colour would waste a query: redraw it
        # every round draws for every row, so an image's random stream never depends on the others
        same = (new == delta).flatten(1).all(1).view(-1, 1, 1, 1)
        colour = torch.where(same, eps * _signs((m, c, 1, 1), gen, delta), colour)
        new = torch.where(window, colour, delta)
    return new


def _score(model: nn.Module, x: Tensor, delta: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, ...]:
    """Query the model at x + delta: (margin to maximise, success, logits)."""
    logits = model((x + delta).clamp(0, 1))
    return margin_loss(logits, y, t), success(logits, y, t), logits


@attack_fn
@torch.no_grad()
def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    n_queries: int = 1000,
    p_init: float = 0.8,
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """Random search over square-shaped Linf perturbations; needs no gradients.

    Starts from vertical stripes of +-eps, then each query repaints one random square (side
    ``sqrt(p * H * W)``, p from :func:`p_schedule`) and keeps it if the CW margin improves.
    ``n_queries`` is the per-image budget including the first query; only images not yet fooled are
    queried (with ``early_stop``). ``target``: targeted margin, success = prediction == target.
    """
    x = x.detach()
    out, gen = Attacked(x), generator(x, seed)
    n, c, h, w = x.shape
    delta = eps * _signs((n, c, 1, w), gen, x).expand(n, c, h, w).contiguous()
    score, ok, logits = _score(model, x, delta, y, target)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for it in range(1, n_queries):
        if early_stop:
            active &= ~ok
            if not active.any():
                break
        p = p_schedule(p_init, it, n_queries)
        side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        # proposals for every row, queries for the active ones: early stop changes no image's trajectory
        trial = _propose(delta, side, eps, gen)
        rows = active.nonzero().squeeze(1)
        t = None if target is None else target[rows]
        trial_score, trial_ok, trial_logits = _score(model, x[rows], trial[rows], y[rows], t)
        better = trial_score > score[rows]
        kept = rows[better]
        delta[kept], score[kept] = trial[kept], trial_score[better]
        ok[kept], logits[kept] = trial_ok[better], trial_logits[better]
    out.store(torch.arange(n, device=x.device), (x + delta).clamp(0, 1), logits=logits)
    return out
