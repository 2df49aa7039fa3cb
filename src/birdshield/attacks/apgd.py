"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): PGD with momentum and a step size halved at checkpoints whenever
progress stalls, restarting from the best point found."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import (
    Attacked,
    LossFn,
    Norm,
    Rows,
    ascent,
    attack_fn,
    check_norm,
    dlr_loss,
    generator,
    get_loss,
    loss_grad,
    project,
    random_start,
    success,
)

_ALPHA = 0.75  # momentum weight on the new gradient step
_RHO = 0.75  # a stretch with fewer than rho * length loss increases counts as stalled


def checkpoints(steps: int) -> list[int]:
    """Checkpoint iterations w_j = ceil(p_j * steps).

    p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06).
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 9)) for q in p[1:] if q <= 1})  # round: 0.57*100 != 57


@dataclass
class ApgdRows(Rows):
    """APGD's per-image state beside the current point ``xa``: the previous point (momentum), the best
    point with its loss and gradient, the step size ``eta``, how often the loss rose since the last
    checkpoint, the best loss at that checkpoint and whether the step was halved there."""

    xprev: Tensor | None = None
    xbest: Tensor | None = None
    grad: Tensor | None = None
    gbest: Tensor | None = None
    loss: Tensor | None = None
    best: Tensor | None = None
    best_at_checkpoint: Tensor | None = None
    rises: Tensor | None = None
    eta: Tensor | None = None
    halved: Tensor | None = None


def _halve_stalled(s: ApgdRows, span: int) -> ApgdRows:
    """Checkpoint rule: halve eta and jump back to the best point where progress stalled."""
    stalled = (s.rises < _RHO * span) | (~s.halved & (s.best <= s.best_at_checkpoint))
    b = stalled.view(-1, 1, 1, 1)
    s.eta = torch.where(stalled, s.eta / 2, s.eta)
    s.xa = torch.where(b, s.xbest, s.xa)
    s.xprev = torch.where(b, s.xbest, s.xprev)  # no momentum across the jump
    s.grad = torch.where(b, s.gbest, s.grad)
    s.loss = torch.where(stalled, s.best, s.loss)
    s.halved, s.best_at_checkpoint = stalled, s.best.clone()
    s.rises = torch.zeros_like(s.rises)
    return s


def _evaluate(model: nn.Module, s: ApgdRows, loss_fn: LossFn) -> Tensor:
    """Forward/backward at the current point; update the loss trend and the best point. Returns logits."""
    loss, s.grad, logits = loss_grad(model, s.xa, s.y, s.target, loss_fn)
    s.rises = s.rises + (loss > s.loss).long()
    s.loss = loss
    better = loss > s.best
    b = better.view(-1, 1, 1, 1)
    s.best = torch.where(better, loss, s.best)
    s.xbest = torch.where(b, s.xa, s.xbest)
    s.gbest = torch.where(b, s.grad, s.gbest)
    return logits


def _record(s: ApgdRows, logits: Tensor, out: Attacked, targeted_goal: bool, early_stop: bool) -> ApgdRows:
    """Keep the first successful point of each image; with early_stop drop those rows."""
    ok = success(logits, s.y, s.target if targeted_goal else None)
    out.store(s.idx, s.xa, ok & ~out.done[s.idx], logits)
    return s.keep(~ok) if early_stop else s


def apgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    out: Attacked,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    loss_fn: LossFn,
    gen: torch.Generator,
    early_stop: bool,
    targeted_goal: bool,
) -> None:
    """One APGD run on the images ``out`` has not fooled yet; results are written into ``out``.

    ``target`` feeds the loss; success means prediction == target only if ``targeted_goal``.
    Images never fooled get their highest-loss point.
    """
    idx = out.pending()
    if idx.numel() == 0:
        return
    start = random_start(x, eps, norm, gen)[idx]  # drawn for the full batch: reproducible
    n, dev = idx.numel(), x.device
    never = torch.full((n,), -math.inf, device=dev)
    s = ApgdRows(
        idx, x[idx], y[idx], start, None if target is None else target[idx],
        xprev=start, xbest=start, gbest=torch.zeros_like(start), loss=never, best=never.clone(),
        rises=torch.zeros(n, dtype=torch.long, device=dev),
    )  # fmt: skip
    logits = _evaluate(model, s, loss_fn)  # sets the best point to the start
    s.eta, s.rises = torch.full((n,), 2.0 * eps, device=dev), torch.zeros_like(s.rises)
    s.best_at_checkpoint, s.halved = s.best.clone(), torch.zeros(n, dtype=torch.bool, device=dev)
    s = _record(s, logits, out, targeted_goal, early_stop)
    marks, last = checkpoints(steps), 0
    for i in range(steps):
        if s.empty:
            return
        z = project(s.xa + s.eta.view(-1, 1, 1, 1) * ascent(s.grad, norm), s.x0, eps, norm)
        a = _ALPHA if i > 0 else 1.0
        x_new = project(s.xa + a * (z - s.xa) + (1 - a) * (s.xa - s.xprev), s.x0, eps, norm)
        s.xprev, s.xa = s.xa, x_new
        logits = _evaluate(model, s, loss_fn)
        s = _record(s, logits, out, targeted_goal, early_stop)
        if i + 1 in marks:
            s, last = _halve_stalled(s, i + 1 - last), i + 1
    left = ~out.done[s.idx]
    out.store(s.idx[left], s.xbest[left])


@attack_fn
def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    target: Tensor | None = None,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """APGD with cross-entropy ("ce") or DLR ("dlr") loss, Linf or L2, from a random start.

    Step size starts at 2 * eps and is halved at the checkpoints of :func:`checkpoints` when the loss
    rose in fewer than 75% of the steps since the last one, or the best loss did not improve and the
    step was not just halved. Momentum 0.75. Returns the first successful point of each image (else
    its highest-loss point). Restarts run only on images not yet fooled. ``target``: targeted attack
    (targeted DLR for loss="dlr", minus CE of ``target`` for "ce"). Without ``early_stop`` fooled images
    keep being computed but their first success is still kept.
    """
    x = x.detach()
    out, gen = Attacked(x), generator(x, seed)
    for _ in range(max(1, restarts)):
        apgd_run(
            model,
            x,
            y,
            target,
            out,
            eps=eps,
            norm=check_norm(norm),
            steps=steps,
            loss_fn=get_loss(loss),
            gen=gen,
            early_stop=early_stop,
            targeted_goal=target is not None,
        )
    return out


@attack_fn
def apgd_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    seed: int = 0,
    early_stop: bool = True,
) -> Attacked:
    """APGD-T: targeted-DLR APGD against each of the top ``n_target_classes`` wrong classes in turn.

    Target classes are ranked by the clean logits, so the cost does not grow with the number of
    classes. Each run attacks only images still correctly classified; success is misclassification.
    With ``early_stop`` images already misclassified when clean are not attacked.
    """
    x = x.detach()
    out, gen = Attacked(x), generator(x, seed)
    with torch.no_grad():
        logits = model(x)
    if early_stop:  # x_adv stays x for those, with the logits just computed
        out.store(torch.arange(len(x), device=x.device), x, logits.argmax(1) != y, logits)
    ranked = logits.scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)
    for k in range(min(n_target_classes, logits.shape[1] - 1)):
        apgd_run(
            model,
            x,
            y,
            ranked[:, k],
            out,
            eps=eps,
            norm=check_norm(norm),
            steps=steps,
            loss_fn=dlr_loss,
            gen=gen,
            early_stop=early_stop,
            targeted_goal=False,
        )
    return out
