"""Shared pieces of the attacks: losses, projections, random starts and early-stop bookkeeping.

Contract of every attack: ``attack(model, x, y, *, eps, ..., target=None, seed=0, early_stop=True)``
returns ``x_adv`` in [0, 1] inside the eps-ball around ``x``; ``x`` holds (N, 3, H, W) images in [0, 1]
and ``model`` maps them to logits. The model's mode, weights and buffers are left as found. Called with
``return_result=True`` it returns an :class:`AttackResult` instead: x_adv with its logits and success.

An attack's body fills an :class:`Attacked` batch (recording the logits it saw at each stored point);
:func:`attack_fn` turns that into the public return value.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = str  # "linf" or "l2"
# (logits, y, target) -> per-image loss that the attack maximises
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
NORMS = ("linf", "l2")
_TINY = 1e-12

P = ParamSpec("P")


# ----------------------------------------------------------------------------- losses (all maximised)


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy of the true class, or minus cross-entropy of ``target`` when targeted."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def _best_other(logits: Tensor, cls: Tensor) -> Tensor:
    """Largest logit among the classes other than ``cls``."""
    return logits.scatter(1, cls[:, None], float("-inf")).amax(dim=1)


def margin_loss(
    logits: Tensor, y: Tensor, target: Tensor | None = None, kappa: float = float("inf")
) -> Tensor:
    """Carlini-Wagner margin: best wrong logit minus true logit (> 0 means fooled), capped at ``kappa``.

    Targeted: target logit minus best other logit. A cap of 0 stops pushing once the attack succeeds.
    """
    z_true = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        m = _best_other(logits, y) - z_true
    else:
        m = logits.gather(1, target[:, None]).squeeze(1) - _best_other(logits, target)
    return m.clamp(max=kappa)


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020); scale invariant, so robust to logit scaling.

    Untargeted: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3).
    Targeted:   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi = logits sorted descending.
    """
    need = 3 if target is None else 4
    if logits.shape[1] < need:
        raise ValueError(f"DLR loss needs at least {need} classes, got {logits.shape[1]}")
    z = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(z_y - _best_other(logits, y)) / (z[:, 0] - z[:, 2] + _TINY)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z[:, 0] - (z[:, 2] + z[:, 3]) / 2 + _TINY)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    return LOSSES[name]


def success(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-image attack success: prediction == target when targeted, else prediction != y."""
    pred = logits.argmax(dim=1)
    return pred == target if target is not None else pred != y


# ----------------------------------------------------------------------------- geometry


def check_norm(norm: str) -> Norm:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {NORMS}")
    return norm


def _flat_norm(t: Tensor) -> Tensor:
    """Per-image L2 norm, shaped to broadcast against (N, C, H, W)."""
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def ascent(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction of unit size in the given norm: sign for Linf, unit vector for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / (_flat_norm(grad) + _TINY)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Pull ``x_adv`` into the eps-ball around ``x`` and then into [0, 1].

    Clipping to [0, 1] after the ball projection only shrinks each |delta_i| (x itself is in [0, 1]),
    so the result stays inside the ball.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / (_flat_norm(delta) + _TINY)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def quantise_in_ball(x: Tensor, x_adv: Tensor, eps: float, norm: Norm) -> Tensor:
    """``x_adv`` rounded to the 8-bit grid and still inside the eps-ball around ``x``: the pixels a PNG
    holds, so the images `birdshield attack` writes and the page shows are the ones judged.

    ``x`` must lie on the grid, as every image decoded from an 8-bit file does. Each change is rounded to
    the nearest grey level; Linf clamps it to the whole levels the ball holds. Rounding can lengthen an L2
    change, so the rounded-up components whose rounding added most are moved one level back towards ``x``
    (to the change rounded towards zero, never longer than the one asked for) until the change fits.
    """
    base = (x * 255).round()
    wanted = x_adv * 255 - base
    step = wanted.round()
    if check_norm(norm) == "linf":
        levels = math.floor(eps * 255 + 1e-6)
        step = step.clamp(-levels, levels)
    else:
        step = _fit_l2(step, wanted, eps * 255)
    return (base + step).clamp(0, 255) / 255


def _fit_l2(step: Tensor, wanted: Tensor, radius: float) -> Tensor:
    """``step`` (whole levels, ``wanted`` rounded) with the fewest components moved back one level so
    that each image's L2 norm is at most ``radius``."""
    flat, goal = step.flatten(1).clone(), wanted.flatten(1)
    excess = (flat.abs() - goal.abs()).clamp(min=0)  # > 0 where rounding moved away from x
    for row in (flat.square().sum(1) > radius**2).nonzero().flatten().tolist():
        over = float(flat[row].square().sum()) - radius**2
        order = excess[row].argsort(descending=True)
        order = order[excess[row, order] > 0]
        saved = (2 * flat[row, order].abs() - 1).cumsum(0)  # |q| -> |q| - 1 saves 2|q| - 1
        count = int((saved < over).sum()) + 1
        idx = order[:count]
        flat[row, idx] -= flat[row, idx].sign()
    return flat.view_as(step)


def random_start(x: Tensor, eps: float, norm: Norm, gen: torch.Generator) -> Tensor:
    """A random point of the ball (uniform per pixel for Linf; random direction, uniform radius for L2)."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype)
        delta = d / (_flat_norm(d) + _TINY) * r * eps
    return project(x + delta, x, eps, norm)


# ----------------------------------------------------------------------------- gradients and bookkeeping


def loss_grad(
    model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward/backward on the given (active) rows: (loss per image, d loss / d x_adv, logits).

    ``autograd.grad`` w.r.t. the input only, so no ``.grad`` ever lands on the model's parameters.
    """
    xa = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xa)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
    return loss.detach(), grad.detach(), logits.detach()


@dataclass
class Rows:
    """The images an attack is still working on, one row each: where they sit in the output batch
    (``idx``), their clean images, labels, current points and targets. Attacks add their own per-image
    state in subclasses; :meth:`keep` narrows every tensor at once as images drop out."""

    idx: Tensor
    x0: Tensor
    y: Tensor
    xa: Tensor
    target: Tensor | None = None

    def keep(self, mask: Tensor) -> Self:
        narrowed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v[mask] for k, v in narrowed.items() if isinstance(v, Tensor)})

    @property
    def empty(self) -> bool:
        return self.idx.numel() == 0


@dataclass
class GradientRows(Rows):
    """Rows of the plain gradient attacks: the last gradient and MI-FGSM's accumulated one."""

    grad: Tensor | None = None
    momentum: Tensor | None = None


@dataclass(frozen=True)
class AttackResult:
    """An attack's output as the model sees it: ``logits`` are those of ``x_adv`` (as the attack last
    computed them, else from one forward pass) and ``success`` says per image whether the attack's goal is
    met (prediction == target when targeted, else prediction != y)."""

    x_adv: Tensor
    logits: Tensor
    success: Tensor


class Attacked:
    """The output batch: rows are written as the attack finds adversarials; ``done`` rows are frozen.

    ``logits`` holds, where ``known``, the logits the attack computed at each row's current point.
    """

    def __init__(self, x: Tensor) -> None:
        self.x_adv = x.detach().clone()
        self.done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.logits: Tensor | None = None
        self.known = torch.zeros_like(self.done)

    def pending(self) -> Tensor:
        """Indices of the images not yet successfully attacked."""
        return (~self.done).nonzero().squeeze(1)

    def store(
        self, idx: Tensor, x_cur: Tensor, ok: Tensor | None = None, logits: Tensor | None = None
    ) -> None:
        """Write ``x_cur`` (whose logits are ``logits``, if known) into rows ``idx``; with ``ok`` write only
        those rows and freeze them."""
        if ok is None:
            self.x_adv[idx] = x_cur
            self._note_logits(idx, logits)
            return
        self.x_adv[idx[ok]] = x_cur[ok]
        self.done[idx[ok]] = True
        self._note_logits(idx[ok], None if logits is None else logits[ok])

    def _note_logits(self, rows: Tensor, logits: Tensor | None) -> None:
        if logits is None:
            self.known[rows] = False
            return
        if self.logits is None:
            self.logits = logits.new_empty(self.x_adv.shape[0], logits.shape[1])
        self.logits[rows] = logits.detach()
        self.known[rows] = True

    def result(
        self, model: nn.Module | Callable[[Tensor], Tensor], y: Tensor, target: Tensor | None
    ) -> AttackResult:
        """The AttackResult; rows whose final logits the attack never computed get one forward pass."""
        missing = (~self.known).nonzero().squeeze(1)
        if missing.numel() or self.logits is None:  # (None: an empty batch)
            with torch.no_grad():
                self._note_logits(missing, model(self.x_adv[missing]))
        assert self.logits is not None
        return AttackResult(self.x_adv, self.logits, success(self.logits, y, target))


def generator(x: Tensor, seed: int) -> torch.Generator:
    """Local RNG on x's device, so attacks are reproducible and the global RNG is left alone."""
    return torch.Generator(device=x.device).manual_seed(int(seed))


@contextmanager
def sealed(model: nn.Module | Callable[[Tensor], Tensor], seed: int, device: torch.device) -> Iterator[None]:
    """Leave no trace on the model or the global RNG.

    Train-mode BatchNorm updates running stats on every forward and dropout draws from the global RNG,
    so buffers are restored afterwards and the global RNG is forked and seeded (train-mode attacks stay
    reproducible too).
    """
    buffers = list(model.buffers()) if isinstance(model, nn.Module) else []
    saved = [b.detach().clone() for b in buffers]
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, old in zip(buffers, saved, strict=True):
                    b.copy_(old)


def attack_fn(fn: Callable[P, Attacked]) -> Callable[..., Tensor | AttackResult]:
    """Apply the common contract around an attack body: eps=0 returns x, the model is left untouched, and
    ``return_result=True`` gives an AttackResult."""

    @functools.wraps(fn)
    def wrapper(*args: Any, return_result: bool = False, **kwargs: Any) -> Tensor | AttackResult:
        model, x = args[0], args[1]
        if not isinstance(x, Tensor) or not callable(model):
            raise TypeError("an attack is called as attack(model, x, y, *, eps, ...)")
        eps = float(kwargs["eps"])
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if eps == 0 and not return_result:
            return x.clone()
        with sealed(model, int(kwargs.get("seed", 0)), x.device):
            out = Attacked(x) if eps == 0 else fn(*args, **kwargs)
            if not return_result:
                return out.x_adv
            y = args[2] if len(args) > 2 else kwargs["y"]
            return out.result(model, y, kwargs.get("target"))

    sig = inspect.signature(fn)
    flag = inspect.Parameter(
        "return_result", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool"
    )
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*sig.parameters.values(), flag], return_annotation="Tensor | AttackResult"
    )
    return wrapper


def evaluated(
    model: nn.Module | Callable[[Tensor], Tensor],
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    seed: int = 0,
) -> AttackResult:
    """The AttackResult of an ``x_adv`` found without the model's logits (a transfer attack): one forward."""
    with sealed(model, seed, x_adv.device):
        return Attacked(x_adv).result(model, y, target)


def gradient_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    loss_fn: LossFn,
    target: Tensor | None,
    gen: torch.Generator,
    early_stop: bool,
    random_init: bool = False,
    restarts: int = 1,
    momentum: float = 0.0,
) -> Attacked:
    """Iterated projected gradient ascent shared by FGSM, PGD, MI-FGSM and CW-L2.

    Each step runs forward/backward only on the still-active rows. The forward of a step also tells
    which current points already succeed: with ``early_stop`` they are frozen before stepping.
    Restarts run only on images that no restart has fooled yet. With ``momentum`` > 0 the step follows
    the accumulated L1-normalised gradient (MI-FGSM).
    """
    x = x.detach()
    out = Attacked(x)
    for r in range(max(1, restarts)):
        idx = out.pending()
        if idx.numel() == 0:
            break
        noise = random_start(x, eps, norm, gen) if random_init else x  # full batch: reproducible
        t = None if target is None else target[idx]
        s = GradientRows(idx, x[idx], y[idx], noise[idx], t, momentum=torch.zeros_like(x[idx]))
        for _ in range(steps):
            _, s.grad, logits = loss_grad(model, s.xa, s.y, s.target, loss_fn)
            if early_stop:
                ok = success(logits, s.y, s.target)
                out.store(s.idx, s.xa, ok, logits)
                s = s.keep(~ok)
                if s.empty:
                    break
            direction = s.grad
            if momentum:
                l1 = direction.abs().mean((1, 2, 3), keepdim=True) + _TINY
                s.momentum = direction = momentum * s.momentum + direction / l1
            s.xa = project(s.xa + step_size * ascent(direction, norm), s.x0, eps, norm)
        logits = None  # of the final iterates: unknown unless another restart follows
        if r < restarts - 1 and not s.empty:
            with torch.no_grad():
                logits = model(s.xa)
            out.store(s.idx, s.xa, success(logits, s.y, s.target), logits)
        out.store(s.idx, s.xa, logits=logits)  # rows not fooled keep the latest restart's point
    return out
