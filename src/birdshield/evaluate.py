"""Robustness evaluation: clean, corruption and worst-case adversarial accuracy over an attack ensemble.

Images are processed a chunk (``batch_size`` images) at a time, so a test set never sits in memory whole.
Per eps the attacks form an AutoAttack-style cascade: an image counts as robust only if it survives every
attack, and only images still classified correctly are passed on to the next attack. White-box attacks
run before black-box ones (square, transfer), so an image fooled by a black-box attack is one that every
white-box attack missed: the gradient-masking check below relies on this order.

Report schema (``evaluate`` returns it; ``report.write_report`` stores it as ``report.json``)::

    model:          {run_dir, arch, classes, defense}: run_dir is filled in by the caller; defense is
                    the input transform attacked through with BPDA (``Defended``), or None
    split:          dataset split name or None
    n:              images evaluated (readable ones)
    clean_accuracy: fraction of the n images classified correctly
    trained_against: the run's recorded {adversarial: {method, eps, ...}, noise_max, noise_sigma}
                    (rebuilt from older runs' training config; None without training metadata)
    corruptions:    [{name, severity, std, label, accuracy}]  severity None when an explicit noise std is
                    used; label e.g. "jpeg severity=3" or "gaussian_noise std=0.1"
    results:        [{attack, norm, eps, robust_accuracy, fooled, n_attacked, n, seconds}] per eps, in
                    cascade order. Cascade: robust_accuracy = fraction of all n images still correct after
                    this attack and every earlier one; fooled = images newly fooled by this attack;
                    n_attacked = images it ran on (the survivors of the previous attack). Independent mode:
                    every attack runs on all clean-correct images and robust_accuracy is its own.
    ensemble:       [{norm, eps, robust_accuracy}] worst case per image over all attacks
    flags:          [{flag, detail}] sanity checks that failed (see ``_final_flags``); [] when none
    skipped:        [{attack, reason}] requested attacks that cannot run here (wrong norm, too few classes)
    bad_images:     [{path, error}] unreadable files left out of n
    config:         the EvalConfig used (surrogate given as its architecture name)
    seconds:        wall time of the whole evaluation
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from . import data
from .attacks.base import margin_loss
from .attacks.corruptions import corrupt
from .attacks.eps import format_eps
from .attacks.registry import CORRUPTIONS, get_spec
from .runtime import atomic_write_bytes, progress

DEFAULT_L2_EPS = (0.25, 0.5, 1.0)  # used when --norm l2 is asked for without --eps
N_EXAMPLES = 4
ProgressFn = Callable[[str, int, int | None], None]  # (stage, images done, total images or None)


@dataclass(frozen=True)
class EvalConfig:
    """What to measure. ``steps`` maps attack name -> iterations (``default_steps`` for the others)."""

    attacks: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "square")
    eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255)
    norm: str = "linf"
    steps: dict[str, int] = field(default_factory=lambda: {"pgd": 10, "apgd-ce": 20})
    default_steps: int = 10
    restarts: int = 1  # PGD random restarts (APGD keeps one run, as AutoAttack's standard version)
    square_queries: int = 200
    n_target_classes: int = 9  # APGD-T: top wrong classes tried as targets
    n: int | None = None  # seeded, stratified subset of the samples; None = all
    seed: int = 0
    batch_size: int = 32
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = (1, 3, 5)
    noise_std: tuple[float, ...] = (0.05, 0.1, 0.2)  # extra gaussian_noise entries at these explicit stds
    surrogate: nn.Module | None = None  # crafts the "transfer" attack; None = no transfer attack
    independent: bool = False


# quick: sized for a CPU (150 brittle lite0 images at 224 px in a few minutes on 2 cores; early stop makes
# brittle models cheap). full: AutoAttack-strength, meant for a GPU.
PRESETS: dict[str, EvalConfig] = {
    "quick": EvalConfig(),
    "full": EvalConfig(
        attacks=("fgsm", "pgd", "apgd-ce", "apgd-t", "square"),
        eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
        steps={"pgd": 50, "apgd-ce": 100, "apgd-t": 100},
        restarts=5,
        square_queries=5000,
    ),
}


# ------------------------------------------------------------------------------------------------ attacks


def _attack_options(name: str, cfg: EvalConfig, seed: int) -> dict[str, Any]:
    return {
        "norm": cfg.norm,
        "steps": cfg.steps.get(name, cfg.default_steps),
        "restarts": cfg.restarts if name == "pgd" else None,
        "n_queries": cfg.square_queries,
        "n_target_classes": cfg.n_target_classes,
        "surrogate": cfg.surrogate,
        "seed": seed,
        "early_stop": True,
    }


def _skip_reason(name: str, cfg: EvalConfig, num_classes: int) -> str | None:
    spec = get_spec(name)
    if "surrogate" in spec.options and cfg.surrogate is None:
        return "needs a surrogate model (--surrogate RUN_DIR)"
    if cfg.norm not in spec.norms:
        return f"implemented for {'/'.join(spec.norms)} only, evaluation norm is {cfg.norm}"
    if num_classes < spec.min_classes:
        return f"needs at least {spec.min_classes} classes, the model has {num_classes}"
    return None


def attack_plan(cfg: EvalConfig, num_classes: int) -> tuple[list[str], list[dict[str, str]]]:
    """(attacks to run in cascade order, [{attack, reason}] skipped). Unknown names raise ValueError.

    Order: as given, with a surrogate's transfer attack added before square, then black-box attacks
    moved (stably) after all white-box ones.
    """
    names = list(dict.fromkeys(cfg.attacks))
    for name in names:
        get_spec(name)
    if cfg.surrogate is not None and "transfer" not in names:
        names.insert(names.index("square") if "square" in names else len(names), "transfer")
    run, skipped = [], []
    for name in names:
        reason = _skip_reason(name, cfg, num_classes)
        if reason:
            skipped.append({"attack": name, "reason": reason})
        else:
            run.append(name)
    run.sort(key=lambda a: get_spec(a).black_box)
    return run, skipped


def _norm_of(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _logits(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.inference_mode():
        out = model(x)
    return out.clone()  # a normal tensor: inference tensors refuse later in-place writes


# ------------------------------------------------------------------------------------------------ tallies


@dataclass
class _Attacked:
    n_attacked: int = 0
    fooled: int = 0
    robust: int = 0
    outside_ball: int = 0
    seconds: float = 0.0


@dataclass
class _Tally:
    """Counts summed over chunks; the report is built from these alone."""

    n: int = 0
    clean: int = 0
    corrupt: Counter = field(default_factory=Counter)
    attacks: dict[tuple[float, str], _Attacked] = field(default_factory=lambda: defaultdict(_Attacked))
    ensemble: Counter = field(default_factory=Counter)
    black_box_only: Counter = field(default_factory=Counter)
    flags: list[dict[str, str]] = field(default_factory=list)


def _corruption_specs(cfg: EvalConfig) -> list[dict[str, Any]]:
    specs = [
        {"name": c, "severity": s, "std": None, "label": f"{c} severity={s}"}
        for c in cfg.corruptions
        for s in cfg.severities
    ]
    return specs + [
        {"name": "gaussian_noise", "severity": None, "std": s, "label": f"gaussian_noise std={s:g}"}
        for s in cfg.noise_std
    ]


def _corruptions(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, tally: _Tally, seed: int) -> None:
    for spec in _corruption_specs(cfg):
        if spec["std"] is None:
            xc = corrupt(x, spec["name"], spec["severity"], seed=seed)
        else:
            xc = corrupt(x, spec["name"], 1, seed=seed, std=spec["std"])
        tally.corrupt[spec["label"]] += int((_logits(model, xc).argmax(1) == y).sum())


def _ensemble_at(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    eps: float,
    cfg: EvalConfig,
    plan: Sequence[str],
    tally: _Tally,
    seed: int,
    on_stage: Callable[[str], None],
) -> Tensor:
    """Run the attack ensemble at one eps on one chunk; returns each image's worst input found."""
    alive = correct.clone()
    fooled_wb, fooled_bb = torch.zeros_like(correct), torch.zeros_like(correct)
    worst = x.clone()
    for name in plan:
        on_stage(f"{name} eps={format_eps(eps)}")
        rows = (correct if cfg.independent else alive).nonzero().squeeze(1)
        fooled, rec, t0 = torch.zeros_like(correct), tally.attacks[(eps, name)], time.perf_counter()
        if rows.numel():
            spec = get_spec(name)
            kwargs = spec.kwargs(eps, **_attack_options(name, cfg, seed))
            result = spec.load()(model, x[rows], y[rows], return_result=True, **kwargs)
            x_adv = result.x_adv
            fooled[rows] = result.logits.argmax(1) != y[rows]  # the logits of x_adv, as the attack saw them
            rec.outside_ball += int((_norm_of(x_adv - x[rows], cfg.norm) > eps * (1 + 1e-5) + 1e-6).sum())
            fresh = ~(fooled_wb | fooled_bb)[rows]  # keep the first fooling input of each image
            worst[rows[fresh]] = x_adv[fresh]
        (fooled_bb if get_spec(name).black_box else fooled_wb).logical_or_(fooled)
        alive &= ~fooled
        rec.n_attacked += rows.numel()
        rec.fooled += int(fooled.sum())
        rec.robust += int((correct & ~fooled).sum() if cfg.independent else alive.sum())
        rec.seconds += time.perf_counter() - t0
    tally.ensemble[eps] += int(alive.sum())
    tally.black_box_only[eps] += int((fooled_bb & ~fooled_wb).sum())
    return worst


# ------------------------------------------------------------------------------------------------ sanity


def _gradient_flags(model: nn.Module, x: Tensor, y: Tensor) -> list[dict[str, str]]:
    """Input gradients of the clean loss: non-finite or exactly zero ones make gradient attacks blind."""
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(xg)
            (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg, retain_graph=True)
            (g_m,) = torch.autograd.grad(margin_loss(logits, y).sum(), xg)
    except RuntimeError as e:  # the output does not depend differentiably on the input at all
        return [
            {"flag": "no input gradient", "detail": f"cannot differentiate the model w.r.t. its input: {e}"}
        ]
    flags = []
    if not (torch.isfinite(g_ce).all() and torch.isfinite(g_m).all()):
        flags.append({"flag": "non-finite gradients", "detail": "NaN/inf input gradients on clean images"})
    zero_ce = (g_ce.flatten(1) == 0).all(1)
    if zero_ce.any():
        zero_m = int(((g_m.flatten(1) == 0).all(1) & zero_ce).sum())
        flags.append(
            {
                "flag": "zero gradients",
                "detail": f"cross-entropy input gradient is exactly zero for {int(zero_ce.sum())}/{len(y)} "
                f"clean images ({zero_m} also for the logit margin): a non-differentiable input step "
                "(quantisation, JPEG), or saturated softmax; gradient attacks get no signal there "
                "(gradient masking). Rely on black-box results and BPDA/EOT-style attacks.",
            }
        )
    return flags


def _stochastic_flag(model: nn.Module, x: Tensor) -> list[dict[str, str]]:
    a, b = _logits(model, x), _logits(model, x)
    if torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        return []
    changed = int((a.argmax(1) != b.argmax(1)).sum())
    return [
        {
            "flag": "stochastic model",
            "detail": f"two identical calls gave different logits (max |diff| {(a - b).abs().max():.3g}, "
            f"{changed}/{len(x)} predictions changed): accuracies are noisy and single-sample gradients "
            "understate attacks; evaluate with EOT (gradients averaged over many calls).",
        }
    ]


def _final_flags(tally: _Tally, cfg: EvalConfig, plan: Sequence[str]) -> list[dict[str, str]]:
    """Checks on the totals: each one is a known symptom of a broken or gradient-masked evaluation."""
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


# ------------------------------------------------------------------------------------------------ driver


def trained_against(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the run was trained against: its recorded ``trained_against``, or the same summary rebuilt
    from an older run's training config (no adversarial training then). None without training metadata."""
    if isinstance(meta.get("trained_against"), dict):
        return meta["trained_against"]
    training = meta.get("training")
    if not isinstance(training, dict):
        return None
    augment = training.get("augment") or {}
    return {
        "adversarial": {"method": "none"},
        "noise_max": augment.get("noise_max", 0.0),
        "noise_sigma": augment.get("noise_sigma", 0.0),
    }


def _examples(
    model: nn.Module, x: Tensor, y: Tensor, worst: Tensor, correct: Tensor, eps: float, k: int
) -> list[dict[str, Any]]:
    """Up to k clean-correct images with their worst adversarial input; fooled ones, varied species first."""
    rows = correct.nonzero().squeeze(1)
    if rows.numel() == 0 or k <= 0:
        return []
    p_clean, p_adv = _logits(model, x[rows]).softmax(1), _logits(model, worst[rows]).softmax(1)
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


def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    sur = cfg.surrogate
    out["surrogate"] = None if sur is None else getattr(sur, "meta", {}).get("arch", type(sur).__name__)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _report(
    tally: _Tally, cfg: EvalConfig, model: nn.Module, plan: list[str], skipped: list, seconds: float
) -> dict[str, Any]:
    n = tally.n
    meta = getattr(model, "meta", {})
    classes = getattr(model, "class_names", None)
    results = [
        {
            "attack": name,
            "norm": cfg.norm,
            "eps": e,
            "robust_accuracy": tally.attacks[(e, name)].robust / n,
            "fooled": tally.attacks[(e, name)].fooled,
            "n_attacked": tally.attacks[(e, name)].n_attacked,
            "n": n,
            "seconds": round(tally.attacks[(e, name)].seconds, 3),
        }
        for e in cfg.eps
        for name in plan
    ]
    corruptions = [
        {k: s[k] for k in ("name", "severity", "std", "label")} | {"accuracy": tally.corrupt[s["label"]] / n}
        for s in _corruption_specs(cfg)
    ]
    return {
        "model": {
            "run_dir": None,
            "arch": meta.get("arch"),
            "classes": len(classes) if classes else None,
            "defense": meta.get("defense"),
        },
        "split": None,
        "n": n,
        "clean_accuracy": tally.clean / n,
        "trained_against": trained_against(meta),
        "corruptions": corruptions,
        "results": results,
        "ensemble": [{"norm": cfg.norm, "eps": e, "robust_accuracy": tally.ensemble[e] / n} for e in cfg.eps],
        "flags": _final_flags(tally, cfg, plan),
        "skipped": skipped,
        "bad_images": [],
        "config": _config_dict(cfg),
        "seconds": round(seconds, 2),
    }


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on (images in [0,1], labels) batches; returns the report dict (module docstring).

    ``examples``, when a list is given, receives up to 4 images with their worst adversarial input at the
    largest eps (for ``report.write_report``). ``on_progress(stage, images_done, total)`` is called per
    attack and chunk. The model is used as given (mode untouched; ``load`` returns it in eval mode).
    """
    start, tally, device = time.perf_counter(), _Tally(), _device(model)
    n_classes = len(getattr(model, "class_names", None) or []) or None
    plan, skipped = None, []
    report_progress = on_progress or (lambda stage, done, tot: None)

    def stage(name: str) -> None:
        report_progress(name, tally.n, total)

    for x, y in batches:
        x, y = x.to(device), y.to(device)
        seed = cfg.seed + tally.n  # a different, reproducible noise draw per chunk
        if plan is None:  # first chunk: settle the plan and run the one-batch sanity checks
            plan, skipped = attack_plan(cfg, n_classes or int(_logits(model, x[:1]).shape[1]))
            tally.flags += _stochastic_flag(model, x) + _gradient_flags(model, x, y)
        correct = _logits(model, x).argmax(1) == y
        tally.clean += int(correct.sum())
        stage("corruptions")
        _corruptions(model, x, y, cfg, tally, seed)
        for eps in cfg.eps:
            worst = _ensemble_at(model, x, y, correct, eps, cfg, plan, tally, seed, stage)
            if examples is not None and eps == max(cfg.eps):
                examples += _examples(model, x, y, worst, correct, eps, N_EXAMPLES - len(examples))
        tally.n += len(y)
        report_progress("done", tally.n, total)
    if tally.n == 0:
        raise data.DataError("no images to evaluate (every file unreadable, or an empty split)")
    return _report(tally, cfg, model, plan or [], skipped, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ samples


def samples_for_model(dataset: data.Dataset, split: str, class_names: Sequence[str]) -> list[data.Sample]:
    """The split's samples relabelled to the model's class indices (by name); other classes are dropped."""
    samples = dataset.splits.get(split) or []
    if not samples:
        raise data.DataError(f"{dataset.root}: split {split!r} is empty or missing")
    index = {name: i for i, name in enumerate(class_names)}
    mapped = [
        data.Sample(s.path, index[dataset.class_names[s.label]])
        for s in samples
        if dataset.class_names[s.label] in index
    ]
    if not mapped:
        raise data.DataError(f"{dataset.root}: none of the {split} classes is one of the model's classes")
    return mapped


def _load_chunks(
    samples: Sequence[data.Sample], size: int, batch_size: int, bad: list[dict[str, str]]
) -> Iterator[tuple[Tensor, Tensor]]:
    for good, x, unreadable in data.read_batches([s.path for s in samples], size, batch_size):
        bad += [{"path": str(path), "error": reason} for path, reason in unreadable]
        if x is not None:
            yield x, torch.tensor([samples[i].label for i in good])


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[data.Sample],
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``evaluate`` on image files (labels = model class indices), read a chunk at a time at the model's
    input size; ``cfg.n`` picks a seeded stratified subset. Unreadable files are listed in bad_images."""
    chosen, bad = data.stratified_subset(samples, cfg.n, cfg.seed), []
    chunks = _load_chunks(chosen, model.image_size, cfg.batch_size, bad)
    report = evaluate(model, chunks, cfg, on_progress, examples, total=len(chosen))
    report["bad_images"] = bad
    return report


# -------------------------------------------------------------------------------------------- attack files

CSV_COLUMNS = [
    "image", "output", "label", "label_source", "target", "clean_species", "clean_confidence",
    "adv_species", "adv_confidence", "success", "linf", "linf_255", "l2", "error",
]  # fmt: skip


def output_names(inputs: Sequence[str | Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: same path relative to the given folder (a file: its name), .png.

    Files found under ``out_dir`` while walking a folder are left out (a re-run must not attack its own
    outputs). Refuses (DataError) an input folder as ``out_dir`` and any output landing on an input file.
    """
    out_dir, pairs, used = Path(out_dir).absolute(), [], set()
    for given in map(Path, inputs):
        if given.is_dir() and given.resolve() == out_dir.resolve():
            raise data.DataError(f"--out {out_dir} is an input folder; choose another output folder")
        for f in data.list_images(given):
            if given.is_dir() and out_dir in f.absolute().parents:
                continue
            rel = f.relative_to(given) if given.is_dir() else Path(f.name)
            dst, k = out_dir / rel.with_suffix(".png"), 1
            while dst in used:  # a.jpg and a.png in one folder: keep both
                dst, k = out_dir / rel.with_name(f"{rel.stem}_{k}.png"), k + 1
            used.add(dst)
            pairs.append((f, dst))
    sources = {f.resolve() for f, _ in pairs}
    clash = [str(d) for _, d in pairs if d.resolve() in sources]
    if clash:
        raise data.DataError(f"output would overwrite input file(s) {clash[:3]}; choose another --out folder")
    return pairs


def _quantise(x: Tensor, x_adv: Tensor, eps: float, norm: str) -> Tensor:
    """8-bit version of x_adv; for Linf the rounded change is kept inside the ball (x is on the grid)."""
    q, q0 = (x_adv * 255).round(), (x * 255).round()
    if norm == "linf":
        k = math.floor(eps * 255 + 1e-6)
        q = q0 + (q - q0).clamp(-k, k)
    return q.clamp(0, 255)


def _png_bytes(q: Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(q.to(torch.uint8).permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _attack_batch(
    model: nn.Module, batch: list[tuple[Path, Path, Tensor]], attack: str, eps: float, options: dict[str, Any]
) -> list[dict[str, Any]]:
    names = model.class_names
    index = {name: i for i, name in enumerate(names)}
    x = torch.stack([t for _, _, t in batch]).to(_device(model))
    p_clean = _logits(model, x).softmax(1)
    folder = [index.get(src.parent.name) for src, _, _ in batch]
    y = torch.tensor([f if f is not None else int(p) for f, p in zip(folder, p_clean.argmax(1), strict=True)])
    y = y.to(x.device)
    target = options.get("target")
    target_t = None if target is None else torch.full_like(y, index[target])
    spec = get_spec(attack)
    x_adv = spec.load()(model, x, y, **spec.kwargs(eps, **(options | {"target": target_t})))
    q = _quantise(x, x_adv, eps, options.get("norm") or "linf")
    p_adv = _logits(model, q / 255).softmax(1)
    rows = []
    for i, (src, dst, _) in enumerate(batch):
        atomic_write_bytes(dst, _png_bytes(q[i]))
        row = _csv_row(names, int(y[i]), p_clean[i], p_adv[i], q[i] / 255 - x[i], target)
        src_label = "folder" if folder[i] is not None else "prediction"
        rows.append(row | {"image": str(src), "output": str(dst), "label_source": src_label})
    return rows


def _csv_row(
    names: Sequence[str], y: int, p_clean: Tensor, p_adv: Tensor, delta: Tensor, target: str | None
) -> dict[str, Any]:
    c, a = p_clean.max(0), p_adv.max(0)
    hit = names[int(a.indices)] == target if target else int(a.indices) != y
    linf = float(delta.abs().max())
    return {
        "label": names[y], "target": target or "", "success": int(hit), "error": "",
        "clean_species": names[int(c.indices)], "clean_confidence": f"{float(c.values):.4f}",
        "adv_species": names[int(a.indices)], "adv_confidence": f"{float(a.values):.4f}",
        "linf": f"{linf:.6f}", "linf_255": f"{linf * 255:.2f}", "l2": f"{float(delta.norm()):.4f}",
    }  # fmt: skip


def attack_files(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    attack: str = "pgd",
    eps: float,
    batch_size: int = 16,
    **options: Any,
) -> list[dict[str, Any]]:
    """Attack image files and write the adversarial images as 8-bit PNGs plus ``out_dir/attack.csv``.

    Images are attacked at the model's input resolution (shorter side resized, centre crop, as in
    evaluation), so the PNGs have that size. Untargeted label: the parent folder's name if it is one of
    the model's classes, else the model's clean prediction. ``options``: norm, steps, seed, target (a
    class name), restarts, n_queries, early_stop (default True: the first point that fools). The CSV's
    adversarial prediction and perturbation size are those of the written 8-bit image. Unreadable files
    get a row with their error.
    """
    spec = get_spec(attack)
    target = options.get("target")
    if target is not None:
        if target not in model.class_names:
            raise ValueError(f"unknown target class {target!r}; the model's classes: {model.class_names}")
        if not spec.targeted:
            raise ValueError(f"attack {attack!r} cannot be targeted")
    out_dir = Path(out_dir)
    pairs, rows, batch = output_names(inputs, out_dir), [], []
    for j, (src, dst) in enumerate(progress(pairs, desc=attack, unit="img")):
        try:
            batch.append((src, dst, data.to_tensor(data.read_rgb(src), model.image_size)))
        except data.BadImageError as e:
            rows.append(dict.fromkeys(CSV_COLUMNS, "") | {"image": str(src), "error": e.reason})
        if batch and (len(batch) == batch_size or j == len(pairs) - 1):
            rows += _attack_batch(model, batch, attack, eps, options)
            batch = []
    order = {str(src): i for i, (src, _) in enumerate(pairs)}
    rows.sort(key=lambda r: order[r["image"]])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "attack.csv", buf.getvalue().encode())
    return rows


__all__ = [
    "DEFAULT_L2_EPS",
    "PRESETS",
    "EvalConfig",
    "attack_files",
    "attack_plan",
    "evaluate",
    "evaluate_samples",
    "output_names",
    "samples_for_model",
    "trained_against",
]
