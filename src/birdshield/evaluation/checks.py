"""Sanity checks of an evaluation: each flag is a known symptom of a broken or gradient-masked evaluation.

The first chunk's model checks (gradients, stochasticity) go into ``Tally.flags``; ``final_flags`` adds
the checks on the totals."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.base import margin_loss
from ..attacks.eps import format_eps
from ..attacks.registry import get_spec
from ..inference import inference_logits
from .cascade import Tally
from .config import EvalConfig


def model_flags(model: nn.Module, x: Tensor, y: Tensor, clean_logits: Tensor) -> list[dict[str, str]]:
    """The first chunk's checks of the model, stochasticity then gradients, from one forward with gradients:
    its logits are the second call compared with ``clean_logits`` (the clean pass of the same x)."""
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(xg)
            (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg, retain_graph=True)
    except RuntimeError as e:  # the output does not depend differentiably on the input at all
        detail = f"cannot differentiate the model w.r.t. its input: {e}"
        return stochastic_flag(clean_logits, inference_logits(model, x)) + [
            {"flag": "no input gradient", "detail": detail}
        ]
    return stochastic_flag(clean_logits, logits.detach()) + _gradient_flags(logits, xg, y, g_ce)


def _gradient_flags(logits: Tensor, xg: Tensor, y: Tensor, g_ce: Tensor) -> list[dict[str, str]]:
    """Input gradients of the clean loss: non-finite or exactly zero ones make gradient attacks blind.

    The logit margin's gradient is only needed to qualify zero cross-entropy gradients (a non-finite
    margin gradient comes with a non-finite cross-entropy one: both are the logits' Jacobian times a
    finite vector), so its backward pass is spent only then.
    """
    finite, zero_flags = bool(torch.isfinite(g_ce).all()), []
    zero_ce = (g_ce.flatten(1) == 0).all(1)
    if zero_ce.any():
        with torch.enable_grad():
            (g_m,) = torch.autograd.grad(margin_loss(logits, y).sum(), xg)
        finite = finite and bool(torch.isfinite(g_m).all())
        zero_m = int(((g_m.flatten(1) == 0).all(1) & zero_ce).sum())
        zero_flags.append(
            {
                "flag": "zero gradients",
                "detail": f"cross-entropy input gradient is exactly zero for {int(zero_ce.sum())}/{len(y)} "
                f"clean images ({zero_m} also for the logit margin): a non-differentiable input step "
                "(quantisation, JPEG), or saturated softmax; gradient attacks get no signal there "
                "(gradient masking). Rely on black-box results and BPDA/EOT-style attacks.",
            }
        )
    non_finite = {"flag": "non-finite gradients", "detail": "NaN/inf input gradients on clean images"}
    return ([] if finite else [non_finite]) + zero_flags


CHECKED_IMAGES = 8  # of the first chunk: randomness, broken gradients or a wrong export show on any image


def first_chunk_flags(
    model: nn.Module, forward_model: nn.Module | None, x: Tensor, y: Tensor, clean_logits: Tensor
) -> list[dict[str, str]]:
    """``model_flags``, and with a forward-only twin (which gave ``clean_logits``) a check that it computes
    what the attacked model computes: the clean pass and the black-box attacks rest on it. On the first
    CHECKED_IMAGES images only: a forward and backward pass of a whole chunk costs as much as an attack
    step on it, and these symptoms are not rare ones."""
    x, y, clean_logits = x[:CHECKED_IMAGES], y[:CHECKED_IMAGES], clean_logits[:CHECKED_IMAGES]
    if forward_model is None:
        return model_flags(model, x, y, clean_logits)
    logits = inference_logits(model, x)
    flags = model_flags(model, x, y, logits)
    gap = float((clean_logits - logits).abs().max())
    changed = int((clean_logits.argmax(1) != logits.argmax(1)).sum())
    if gap > 1e-3 or changed:
        flags.append(
            {
                "flag": "forward model differs",
                "detail": f"the forward-only runtime's logits differ from the model's (max |diff| {gap:.3g}, "
                f"{changed}/{len(y)} predictions changed): rerun with --runtime torch",
            }
        )
    return flags


def stochastic_flag(a: Tensor, b: Tensor) -> list[dict[str, str]]:
    """Two calls of the model on the same images gave logits a and b: differing ones flag randomness."""
    if torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        return []
    changed = int((a.argmax(1) != b.argmax(1)).sum())
    return [
        {
            "flag": "stochastic model",
            "detail": f"two identical calls gave different logits (max |diff| {(a - b).abs().max():.3g}, "
            f"{changed}/{len(a)} predictions changed): accuracies are noisy and single-sample gradients "
            "understate attacks; evaluate with EOT (gradients averaged over many calls).",
        }
    ]


def final_flags(tally: Tally, cfg: EvalConfig, plan: Sequence[str]) -> list[dict[str, str]]:
    """Checks on the totals (after the first chunk's flags in ``tally.flags``)."""
    flags = list(tally.flags)
    eps = sorted(cfg.eps)
    for lo, hi in zip(eps, eps[1:], strict=False):
        if tally.ensemble[hi] > tally.ensemble[lo]:
            flags.append(
                {
                    "flag": "robust accuracy rises with eps",
                    "detail": f"ensemble {tally.ensemble[lo]}/{tally.n} at {format_eps(lo)} but "
                    f"{tally.ensemble[hi]}/{tally.n} at {format_eps(hi)}: attacks are not converging",
                }
            )
    limit = max(1, 0.02 * tally.n)
    black_box = [get_spec(a).black_box for a in plan]
    compared = any(black_box) and not all(black_box)
    for e in eps:
        if compared and tally.black_box_only[e] > limit:
            flags.append(
                {
                    "flag": "possible gradient masking",
                    "detail": f"at {format_eps(e)} black-box attacks fooled {tally.black_box_only[e]} images "
                    "that every white-box attack missed",
                }
            )
    worst = max([tally.ensemble[e] for e in eps] + [r.robust for r in tally.attacks.values()], default=0)
    if worst > tally.clean:
        flags.append({"flag": "robust above clean", "detail": f"{worst} robust > {tally.clean} clean images"})
    for (e, name), rec in tally.attacks.items():
        if rec.outside_ball:
            flags.append(
                {
                    "flag": "perturbation outside the eps-ball",
                    "detail": f"{name} at {format_eps(e)}: {rec.outside_ball} images beyond {cfg.norm} eps",
                }
            )
    return flags
