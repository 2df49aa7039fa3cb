"""The measurements of one chunk of images: the attack plan, the corruptions pass, the attack cascade per eps
and the examples, all summed into a :class:`Tally` (counts only, so chunks can be added up and saved).

Per eps the attacks form an AutoAttack-style cascade: an image counts as robust only if it survives every
attack, and only images still classified correctly are passed on to the next attack. White-box attacks
run before black-box ones (square, transfer), so an image fooled by a black-box attack is one that every
white-box attack missed: the gradient-masking check (``checks.final_flags``) relies on this order.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.corruptions import corrupt
from ..attacks.eps import format_eps
from ..attacks.registry import get_spec
from ..inference import inference_logits
from .config import EvalConfig, Models

# ------------------------------------------------------------------------------------------------ attacks


def attack_options(
    name: str, cfg: EvalConfig, seed: int, surrogate: nn.Module | None = None
) -> dict[str, Any]:
    """Every option the evaluation sets; each attack takes those its spec lists (``AttackSpec.kwargs``)."""
    return {
        "norm": cfg.norm,
        "steps": cfg.steps.get(name, cfg.default_steps),
        "restarts": cfg.restarts if name == "pgd" else None,
        "n_queries": cfg.square_queries,
        "n_target_classes": cfg.n_target_classes,
        "surrogate": surrogate,
        "seed": seed,
        "early_stop": True,
    }


def _skip_reason(name: str, cfg: EvalConfig, num_classes: int, surrogate: bool) -> str | None:
    spec = get_spec(name)
    if "surrogate" in spec.options and not surrogate:
        return "needs a surrogate model (--surrogate RUN_DIR)"
    if cfg.norm not in spec.norms:
        return f"implemented for {'/'.join(spec.norms)} only, evaluation norm is {cfg.norm}"
    if num_classes < spec.min_classes:
        return f"needs at least {spec.min_classes} classes, the model has {num_classes}"
    return None


def attack_plan(
    cfg: EvalConfig, num_classes: int, surrogate: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """(attacks to run in cascade order, [{attack, reason}] skipped). Unknown names raise ValueError.

    Order: as given, with a surrogate's transfer attack added before square, then black-box attacks
    moved (stably) after all white-box ones.
    """
    names = list(dict.fromkeys(cfg.attacks))
    for name in names:
        get_spec(name)
    if surrogate and "transfer" not in names:
        names.insert(names.index("square") if "square" in names else len(names), "transfer")
    run, skipped = [], []
    for name in names:
        reason = _skip_reason(name, cfg, num_classes, surrogate)
        if reason:
            skipped.append({"attack": name, "reason": reason})
        else:
            run.append(name)
    run.sort(key=lambda a: get_spec(a).black_box)
    return run, skipped


def _norm_of(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


# ------------------------------------------------------------------------------------------------ tallies


@dataclass
class AttackTally:
    n_attacked: int = 0
    fooled: int = 0
    robust: int = 0
    outside_ball: int = 0
    seconds: float = 0.0


@dataclass
class Tally:
    """Counts summed over chunks; the report is built from these alone."""

    n: int = 0
    clean: int = 0
    top5: int = 0
    per_class: Counter = field(default_factory=Counter)  # class index -> images
    per_class_correct: Counter = field(default_factory=Counter)
    confused: Counter = field(default_factory=Counter)  # "true,predicted" -> clean mistakes
    corrupt: Counter = field(default_factory=Counter)
    attacks: dict[tuple[float, str], AttackTally] = field(default_factory=lambda: defaultdict(AttackTally))
    ensemble: Counter = field(default_factory=Counter)
    black_box_only: Counter = field(default_factory=Counter)
    flags: list[dict[str, str]] = field(default_factory=list)
    # image file -> its label, clean prediction and whether it survived the ensemble at each eps (str):
    # what pairs two reports photo by photo (`compare --paired`); empty for tensors without file names
    images: dict[str, dict[str, Any]] = field(default_factory=dict)


def clean_pass(logits: Tensor, y: Tensor, tally: Tally) -> Tensor:
    """Count the clean predictions (top-1, top-5, per class, confusions); returns which are correct."""
    pred = logits.argmax(1)
    correct = pred == y
    tally.clean += int(correct.sum())
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    tally.top5 += int((top5 == y[:, None]).any(1).sum())
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        tally.per_class[t] += 1
        if t == p:
            tally.per_class_correct[t] += 1
        else:
            tally.confused[f"{t},{p}"] += 1
    return correct


def corruption_specs(cfg: EvalConfig) -> list[dict[str, Any]]:
    specs = [
        {"name": c, "severity": s, "std": None, "label": f"{c} severity={s}"}
        for c in cfg.corruptions
        for s in cfg.severities
    ]
    return specs + [
        {"name": "gaussian_noise", "severity": None, "std": s, "label": f"gaussian_noise std={s:g}"}
        for s in cfg.noise_std
    ]


def corruptions_pass(
    model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, tally: Tally, seed: int
) -> None:
    for spec in corruption_specs(cfg):
        if spec["std"] is None:
            xc = corrupt(x, spec["name"], spec["severity"], seed=seed)
        else:
            xc = corrupt(x, spec["name"], 1, seed=seed, std=spec["std"])
        tally.corrupt[spec["label"]] += int((inference_logits(model, xc).argmax(1) == y).sum())


def ensemble_at(
    models: Models,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    clean_logits: Tensor,
    eps: float,
    cfg: EvalConfig,
    plan: Sequence[str],
    tally: Tally,
    seed: int,
    on_stage: Callable[[str], None],
) -> tuple[Tensor, Tensor]:
    """Run the attack ensemble at one eps on one chunk; returns each image's worst input found, with
    its logits (``clean_logits`` where no attack ran)."""
    alive = correct.clone()
    fooled_wb, fooled_bb = torch.zeros_like(correct), torch.zeros_like(correct)
    worst, worst_logits = x.clone(), clean_logits.clone()
    for name in plan:
        on_stage(f"{name} eps={format_eps(eps)}")
        rows = (correct if cfg.independent else alive).nonzero().squeeze(1)
        fooled, rec, t0 = torch.zeros_like(correct), tally.attacks[(eps, name)], time.perf_counter()
        spec = get_spec(name)
        if rows.numel():
            kwargs = spec.kwargs(eps, **attack_options(name, cfg, seed, models.surrogate))
            attacked = models.forward_only if spec.black_box else models.model
            result = spec.load()(attacked, x[rows], y[rows], return_result=True, **kwargs)
            x_adv = result.x_adv
            fooled[rows] = result.logits.argmax(1) != y[rows]  # the logits of x_adv, as the attack saw them
            rec.outside_ball += int((_norm_of(x_adv - x[rows], cfg.norm) > eps * (1 + 1e-5) + 1e-6).sum())
            fresh = ~(fooled_wb | fooled_bb)[rows]  # keep the first fooling input of each image
            worst[rows[fresh]] = x_adv[fresh]
            worst_logits[rows[fresh]] = result.logits[fresh].to(worst_logits.dtype)
        (fooled_bb if spec.black_box else fooled_wb).logical_or_(fooled)
        alive &= ~fooled
        rec.n_attacked += rows.numel()
        rec.fooled += int(fooled.sum())
        rec.robust += int((correct & ~fooled).sum() if cfg.independent else alive.sum())
        rec.seconds += time.perf_counter() - t0
    tally.ensemble[eps] += int(alive.sum())
    tally.black_box_only[eps] += int((fooled_bb & ~fooled_wb).sum())
    return worst, worst_logits


def pick_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    worst: Tensor,
    correct: Tensor,
    eps: float,
    k: int,
    logits: tuple[Tensor, Tensor],
) -> list[dict[str, Any]]:
    """Up to k clean-correct images with their worst adversarial input; fooled ones, varied species first.

    ``logits``: the model's logits of x and of worst, as the clean pass and the attacks computed them."""
    rows = correct.nonzero().squeeze(1)
    if rows.numel() == 0 or k <= 0:
        return []
    p_clean, p_adv = (z[rows].float().softmax(1) for z in logits)
    held, labels, seen, rank = (p_adv.argmax(1) == y[rows]).tolist(), y[rows].tolist(), Counter(), []
    for c in labels:
        seen[c] += 1
        rank.append(seen[c])  # 1 for a species' first image, 2 for its second, ...
    order = sorted(range(len(labels)), key=lambda i: (held[i], rank[i]))[:k]  # fooled, varied species
    names = getattr(model, "class_names", None) or [str(i) for i in range(p_clean.shape[1])]
    out = []
    for i in order:
        c, a = p_clean[i].max(0), p_adv[i].max(0)
        out.append(
            {
                "x": x[rows[i]].cpu(),
                "x_adv": worst[rows[i]].cpu(),
                "label": names[int(y[rows[i]])],
                "clean": (names[int(c.indices)], float(c.values)),
                "adv": (names[int(a.indices)], float(a.values)),
                "eps": eps,
            }
        )
    return out
