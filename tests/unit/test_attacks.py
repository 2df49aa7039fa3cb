"""Property tests for birdshield.attacks (CleverHans style) on a tiny, accurate but brittle conv net."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from helpers import SHARED
from torch import Tensor, nn

from birdshield.attacks import ATTACKS, CORRUPTIONS, AttackResult, corrupt, get_attack, parse_eps
from birdshield.attacks.apgd import checkpoints
from birdshield.attacks.base import dlr_loss, margin_loss, success
from birdshield.attacks.corruptions import _FUNCS
from birdshield.attacks.registry import ATTACK_SPECS, OPTIONS, get_spec
from birdshield.attacks.square import p_schedule

N_CLASSES = 10
LINF_EPS, L2_EPS = 4 / 255, 0.25  # the tiny net is partly robust at these radii

# (registry name, fast parameters); norm given for the L2 cases
LINF_CASES = [
    ("fgsm", {}),
    ("pgd", {"steps": 5}),
    ("mifgsm", {"steps": 5}),
    ("apgd-ce", {"steps": 10}),
    ("apgd-dlr", {"steps": 10}),
    ("apgd-t", {"steps": 5, "n_target_classes": 3}),
    ("square", {"n_queries": 100}),
]
L2_CASES = [
    ("fgsm", {"norm": "l2"}),
    ("pgd", {"norm": "l2", "steps": 5}),
    ("mifgsm", {"norm": "l2", "steps": 5}),
    ("apgd-ce", {"norm": "l2", "steps": 10}),
    ("apgd-t", {"norm": "l2", "steps": 5, "n_target_classes": 3}),
    ("cw", {"steps": 10}),
]
ALL_CASES = [(n, kw, LINF_EPS) for n, kw in LINF_CASES] + [(n, kw, L2_EPS) for n, kw in L2_CASES]
IDS = [f"{n}-{kw.get('norm', 'l2' if n == 'cw' else 'linf')}" for n, kw, _ in ALL_CASES]


def _data(n: int, gen: torch.Generator, templates: Tensor) -> tuple[Tensor, Tensor]:
    """Class = a faint smooth colour pattern under noise: separable, but close to the boundaries."""
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    x = 0.5 + 0.06 * templates[y] + 0.04 * torch.randn(n, 3, 16, 16, generator=gen)
    return x.clamp(0, 1), y


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.randn(N_CLASSES, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, N_CLASSES),
        )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(50):
        xb, yb = _data(128, gen, templates)
        opt.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
    net.eval().zero_grad(set_to_none=True)
    x, y = _data(64, gen, templates)
    return net, x, y


@pytest.fixture
def net(setup: tuple[nn.Module, Tensor, Tensor]) -> nn.Module:
    return copy.deepcopy(setup[0])  # tests may flip modes; never leak that into other tests


@pytest.fixture
def xy(setup: tuple[nn.Module, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return setup[1], setup[2]


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Counting(nn.Module):
    """Counts forward calls and images forwarded."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.images = inner, 0, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.inner(x)


class Detached(nn.Module):
    """Black box: scores only, no gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).detach()


def run(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, **kw: object) -> Tensor:
    return get_attack(name)(model, x, y, eps=eps, **kw)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize(("name", "kw", "eps"), ALL_CASES, ids=IDS)
def test_eps_zero_returns_input(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    out = run(name, net, x, y, 0.0, **kw)
    assert out is not x and torch.equal(out, x)


@pytest.mark.parametrize(("name", "kw", "eps"), ALL_CASES, ids=IDS)
def test_in_box_and_ball_and_weaker_than_clean(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    out = run(name, net, x, y, eps, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    delta = (out - x).flatten(1)
    if kw.get("norm") == "l2" or name == "cw":
        assert delta.norm(dim=1).max() <= eps + 1e-6
    else:
        assert delta.abs().max() <= eps + 1e-7
    clean, robust = accuracy(net, x, y), accuracy(net, out, y)
    assert clean >= 0.95 and robust < clean  # accurate but brittle, and every attack bites


@pytest.mark.parametrize(("name", "kw", "eps"), ALL_CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_left_untouched(name: str, kw: dict, eps: float, mode: str, net: nn.Module, xy) -> None:
    x, y = xy
    net.train(mode == "train")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    run(name, net, x, y, eps, **kw)
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(("name", "kw", "eps"), ALL_CASES, ids=IDS)
def test_same_seed_same_output(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    a = run(name, net, x, y, eps, seed=3, **kw)
    assert torch.equal(a, run(name, net, x, y, eps, seed=3, **kw))
    if name in ("pgd", "apgd-ce", "square"):
        assert not torch.equal(a, run(name, net, x, y, eps, seed=4, **kw))


# ----------------------------------------------------------------------------- strength


@pytest.mark.parametrize(("norm", "eps"), [("linf", LINF_EPS), ("l2", L2_EPS)])
def test_pgd_at_least_as_strong_as_fgsm(norm: str, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    fg = accuracy(net, ATTACKS["fgsm"](net, x, y, eps=eps, norm=norm), y)
    pg = accuracy(net, ATTACKS["pgd"](net, x, y, eps=eps, norm=norm, steps=10), y)
    assert pg < fg < accuracy(net, x, y)  # strictly: one step already bites, ten find more


@pytest.mark.parametrize(
    ("name", "kw", "grid"),
    [
        ("fgsm", {}, [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]),
        ("pgd", {"steps": 5}, [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]),
        ("apgd-ce", {"steps": 10}, [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]),
        ("square", {"n_queries": 100}, [0, 2 / 255, 4 / 255, 8 / 255]),
        ("pgd", {"norm": "l2", "steps": 5}, [0, 0.1, 0.25, 0.5, 1.0]),
        ("cw", {"steps": 10}, [0, 0.1, 0.25, 0.5, 1.0]),
    ],
)
def test_robust_accuracy_does_not_rise_with_eps(name: str, kw: dict, grid: list, net: nn.Module, xy) -> None:
    x, y = xy
    accs = [accuracy(net, run(name, net, x, y, e, **kw), y) for e in grid]
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0]


@pytest.mark.parametrize(
    ("name", "kw", "eps"),
    [
        ("fgsm", {}, 8 / 255),
        ("pgd", {"steps": 10}, 8 / 255),
        ("pgd", {"steps": 10, "loss": "margin"}, 8 / 255),
        ("mifgsm", {"steps": 10}, 8 / 255),
        ("apgd-ce", {"steps": 10}, 8 / 255),
        ("apgd-dlr", {"steps": 10}, 8 / 255),
        ("square", {"n_queries": 300}, 16 / 255),
        ("pgd", {"norm": "l2", "steps": 10}, 1.0),
        ("cw", {"steps": 20}, 1.0),
    ],
)
def test_targeted_reaches_target(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    target = (y + 1) % N_CLASSES
    out = run(name, net, x, y, eps, target=target, **kw)
    with torch.no_grad():
        hit = (net(out).argmax(1) == target).float().mean().item()
    assert hit >= (0.5 if name == "fgsm" else 0.8)


def test_restarts_only_help(net: nn.Module, xy) -> None:
    x, y = xy
    one = accuracy(net, ATTACKS["pgd"](net, x, y, eps=2 / 255, steps=3, restarts=1), y)
    three = accuracy(net, ATTACKS["pgd"](net, x, y, eps=2 / 255, steps=3, restarts=3), y)
    assert three <= one


# ----------------------------------------------------------------------------- early stop


@pytest.mark.parametrize(
    ("name", "kw", "eps"),
    [
        ("fgsm", {}, LINF_EPS),
        ("pgd", {"steps": 10}, LINF_EPS),
        ("mifgsm", {"steps": 10}, LINF_EPS),
        ("apgd-ce", {"steps": 10}, LINF_EPS),
        ("apgd-t", {"steps": 5, "n_target_classes": 3}, LINF_EPS),
        ("square", {"n_queries": 100}, LINF_EPS),
        ("cw", {"steps": 10}, L2_EPS),
        ("pgd", {"steps": 10, "target": "shift"}, 8 / 255),
    ],
)
def test_early_stop_no_weaker_and_cheaper(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    x, y = xy
    kw = dict(kw)
    if kw.get("target") == "shift":
        kw["target"] = (y + 1) % N_CLASSES
    costs, accs = [], []
    for early in (True, False):
        counted = Counting(net)
        out = run(name, counted, x, y, eps, early_stop=early, **kw)
        costs.append(counted.images)
        if "target" in kw:
            accs.append(1 - success(net(out), y, kw["target"]).float().mean().item())
        else:
            accs.append(accuracy(net, out, y))
    assert accs[0] <= accs[1] < 1.0  # the attack fools some images; stopping early never fools fewer
    assert costs[0] < costs[1] if name != "fgsm" else costs[0] == costs[1] == len(x)


# ----------------------------------------------------------------------------- black box and transfer


def test_square_is_black_box(net: nn.Module, xy) -> None:
    x, y = xy
    box = Detached(net)
    with pytest.raises(RuntimeError):
        ATTACKS["pgd"](box, x, y, eps=LINF_EPS)  # proves gradients are really unavailable
    out = ATTACKS["square"](box, x, y, eps=8 / 255, n_queries=100)
    assert (out - x).abs().max() <= 8 / 255 + 1e-7
    assert accuracy(net, out, y) < 0.5


def test_transfer_never_queries_target(net: nn.Module, xy) -> None:
    x, y = xy
    target_model = Counting(net)
    surrogate = copy.deepcopy(net)
    with torch.no_grad():
        for p in surrogate.parameters():
            p.mul_(1.05)
    out = ATTACKS["transfer"](target_model, x, y, surrogate=surrogate, attack="pgd", eps=8 / 255, steps=5)
    assert target_model.calls == 0
    assert torch.equal(out, ATTACKS["pgd"](surrogate, x, y, eps=8 / 255, steps=5, early_stop=False))
    assert accuracy(net, out, y) < accuracy(net, x, y)
    with pytest.raises(ValueError):
        ATTACKS["transfer"](net, x, y, surrogate=surrogate, attack="transfer", eps=0.1)


# ----------------------------------------------------------------------------- cross-check


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks(norm: str, net: nn.Module, xy) -> None:
    """Our PGD (and Linf FGSM) against torchattacks' on identical inputs, both deterministic."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = xy
    eps, alpha = (LINF_EPS, LINF_EPS / 4) if norm == "linf" else (L2_EPS, L2_EPS / 4)
    theirs_pgd = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    ref = theirs_pgd(net, eps=eps, alpha=alpha, steps=7, random_start=False)(x, y)
    ours = ATTACKS["pgd"](
        net, x, y, eps=eps, norm=norm, steps=7, step_size=alpha, random_start=False, early_stop=False
    )
    # Their mean-reduced loss and 1e-10 guard differ from ours in the last float bits, and ReLU/max-pool
    # switches can amplify that over steps: allow a few flipped signs (Linf) / 1% of eps per image (L2).
    if norm == "linf":
        assert (ours - ref).abs().gt(1e-5).float().mean() < 1e-3
    else:
        assert (ours - ref).flatten(1).norm(dim=1).max() <= 0.01 * eps
    if norm == "linf":  # torchattacks has no L2 FGSM
        ref = torchattacks.FGSM(net, eps=eps)(x, y)
        ours = ATTACKS["fgsm"](net, x, y, eps=eps, early_stop=False)
        assert (ours - ref).abs().max() < 1e-6


# ----------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions(name: str, xy) -> None:
    x, _ = xy
    assert torch.equal(corrupt(x, name, 0), x)
    outs = [corrupt(x, name, s, seed=1) for s in range(1, 6)]
    dists = [(o - x).abs().mean().item() for o in outs]
    for o in outs:
        assert o.shape == x.shape and o.min() >= 0 and o.max() <= 1
    assert all(b >= a for a, b in zip(dists, dists[1:], strict=False)), dists
    assert dists[-1] > dists[0] > 0
    assert torch.equal(corrupt(x, name, 3, seed=1), outs[2])


def test_corruption_overrides_and_errors(xy) -> None:
    x, _ = xy
    weak, strong = corrupt(x, "gaussian_noise", std=0.01), corrupt(x, "gaussian_noise", std=0.2)
    assert (weak - x).abs().mean() < (strong - x).abs().mean()
    with pytest.raises(ValueError):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError):
        corrupt(x, "jpeg", 6)


# ----------------------------------------------------------------------------- helpers


def test_registry_and_parse_eps() -> None:
    assert set(ATTACKS) == {
        "fgsm",
        "pgd",
        "mifgsm",
        "apgd-ce",
        "apgd-t",
        "apgd-dlr",
        "cw",
        "square",
        "transfer",
    }
    with pytest.raises(ValueError, match="pgd"):
        get_attack("nope")
    assert parse_eps("4/255") == pytest.approx(4 / 255)
    assert parse_eps("0.0157") == pytest.approx(0.0157)
    assert parse_eps("0") == 0.0
    for bad in ("abc", "-1", "1/0"):
        with pytest.raises(ValueError):
            parse_eps(bad)


def test_losses_and_schedules() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    y, t = torch.tensor([0, 0]), torch.tensor([2, 2])
    assert margin_loss(logits, y).tolist() == [-2.0, 2.0]  # > 0 exactly when misclassified
    assert margin_loss(logits, y, t).tolist() == [-3.0, -1.0]
    assert margin_loss(logits, y, kappa=0.0).tolist() == [-2.0, 0.0]
    assert dlr_loss(logits, y).tolist() == pytest.approx([-2 / 3, 2 / 2])
    assert dlr_loss(logits * 10, y).tolist() == pytest.approx(dlr_loss(logits, y).tolist())  # scale free
    assert dlr_loss(logits, y, t)[0].item() == pytest.approx(-3 / 3.5)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert [p_schedule(0.8, it, 10000) for it in (5, 11, 51, 9000)] == [0.8, 0.4, 0.2, 0.8 / 512]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list(ATTACK_SPECS))
def test_spec_matches_its_function(name: str) -> None:
    """Each spec's options are exactly the option names its function accepts (transfer: its own plus the
    ones it forwards to PGD on the surrogate), and its defaults are the function's."""
    spec = get_spec(name)
    params = inspect.signature(spec.load()).parameters
    named = {p for p in params if p in OPTIONS}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        crafter = get_spec("pgd")
        assert named <= spec.options and spec.options - named <= crafter.options
        params = inspect.signature(crafter.load()).parameters
    else:
        assert named == spec.options
    assert spec.targeted == ("target" in spec.options)
    assert spec.default_steps == (params["steps"].default if "steps" in spec.options else None)
    if "norm" in spec.options:
        assert spec.norms == ("linf", "l2") and params["norm"].default == "linf"
    assert spec.black_box == (not spec.needs_gradients)


def test_corruption_names_are_the_functions() -> None:
    assert tuple(_FUNCS) == CORRUPTIONS


def test_package_names_stay_functions_after_submodule_imports() -> None:
    import birdshield.attacks as package
    import birdshield.attacks.pgd  # noqa: F401  (would shadow the function with the module)

    assert callable(package.pgd) and package.pgd is ATTACKS["pgd"]


# ----------------------------------------------------------------------------- AttackResult

RESULT_CASES = [
    *ALL_CASES,
    ("pgd", {"steps": 4, "restarts": 3}, LINF_EPS),
    ("pgd", {"steps": 4, "early_stop": False}, LINF_EPS),
    ("apgd-ce", {"steps": 10, "restarts": 2}, LINF_EPS),
    ("square", {"n_queries": 100, "early_stop": False}, LINF_EPS),
    ("pgd", {"steps": 5}, 0.0),
]


@pytest.mark.parametrize(("name", "kw", "eps"), RESULT_CASES)
def test_result_logits_are_those_of_x_adv(name: str, kw: dict, eps: float, net: nn.Module, xy) -> None:
    """return_result=True gives the same x_adv, and logits bit-identical to a forward pass over x_adv (the
    evaluation counts fooled images from them instead of running that forward pass itself)."""
    x, y = xy
    res = run(name, net, x, y, eps, return_result=True, **kw)
    assert isinstance(res, AttackResult)
    assert torch.equal(res.x_adv, run(name, net, x, y, eps, **kw))
    with torch.inference_mode():
        assert torch.equal(res.logits, net(res.x_adv))
    assert torch.equal(res.success, res.logits.argmax(1) != y)


def test_result_of_targeted_and_transfer_attacks(net: nn.Module, xy) -> None:
    x, y = xy
    target = (y + 1) % N_CLASSES
    res = run("pgd", net, x, y, 8 / 255, steps=5, target=target, return_result=True)
    assert torch.equal(res.success, res.logits.argmax(1) == target)
    surrogate, counted = copy.deepcopy(net), Counting(net)
    res = ATTACKS["transfer"](counted, x, y, surrogate=surrogate, eps=8 / 255, steps=3, return_result=True)
    assert counted.calls == 1  # the target is queried once, for the logits
    with torch.inference_mode():
        assert torch.equal(res.logits, net(res.x_adv))


AUTOATTACK = SHARED / "peers" / "auto-attack"


@pytest.mark.skipif(not AUTOATTACK.is_dir(), reason=f"reference AutoAttack not found at {AUTOATTACK}")
def test_finds_as_many_adversarials_as_the_reference_autoattack(net: nn.Module, xy, monkeypatch) -> None:
    """APGD-CE then APGD-T, same eps, iterations and targets: the reference may beat our cascade by at most
    one image (random starts and tie-breaking differ); more would mean our evaluation misses attacks."""
    monkeypatch.syspath_prepend(str(AUTOATTACK))
    from autoattack import AutoAttack

    from birdshield.evaluation import EvalConfig, evaluate

    x, y = xy
    aa = AutoAttack(
        net,
        norm="Linf",
        eps=LINF_EPS,
        version="custom",
        attacks_to_run=["apgd-ce", "apgd-t"],
        device="cpu",
        verbose=False,
        seed=0,
    )
    aa.apgd.n_iter, aa.apgd.n_restarts = 20, 1
    aa.apgd_targeted.n_iter, aa.apgd_targeted.n_target_classes = 20, 3
    reference = accuracy(net, aa.run_standard_evaluation(x, y, bs=len(y)), y)
    cfg = EvalConfig(
        attacks=("apgd-ce", "apgd-t"),
        eps=(LINF_EPS,),
        steps={"apgd-ce": 20, "apgd-t": 20},
        n_target_classes=3,
        corruptions=(),
        noise_std=(),
    )
    ours = evaluate(net, [(x, y)], cfg)["ensemble"][0]["robust_accuracy"]
    assert accuracy(net, x, y) > ours  # the attacks do something here
    assert ours <= reference + 1 / len(y) + 1e-9


# ---------------------------------------------------------------------------------- output file names


def _files(root, names: list[str]) -> list:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        paths.append(path)
    return paths


def test_output_names_refuse_existing_files_unless_overwrite(tmp_path) -> None:
    from birdshield.attack_io import output_names
    from birdshield.errors import DataError

    src, out = tmp_path / "in", tmp_path / "out"
    _files(src, ["a.jpg", "b/c.jpg"])
    assert [d for _, d in output_names([src], out)] == [out / "a.png", out / "b" / "c.png"]
    (stale,) = _files(out, ["b/c.png"])
    with pytest.raises(DataError, match=r"already holds 1 file\(s\).*c\.png.*--overwrite"):
        output_names([src], out)
    assert len(output_names([src], out, overwrite=True)) == 2
    stale.unlink()
    _files(out, ["attack.csv"])  # an earlier run's table counts too
    with pytest.raises(DataError, match="attack.csv"):
        output_names([src], out)


def test_output_names_never_overwrite_inputs_even_with_overwrite(tmp_path) -> None:
    from birdshield.attack_io import output_names
    from birdshield.errors import DataError

    (img,) = _files(tmp_path / "pics", ["a.png"])
    link = tmp_path / "link"
    link.symlink_to(img.parent)  # the same folder under another name
    for out in (img.parent, link):
        with pytest.raises(DataError, match="input file"):
            output_names([img], out, overwrite=True)
    (tmp_path / "pics" / "b.png").mkdir()  # a folder where an output would go
    (other,) = _files(tmp_path / "other", ["b.jpg"])
    with pytest.raises(DataError, match="folder"):
        output_names([other], img.parent, overwrite=True)


def test_output_names_on_a_case_insensitive_disk(tmp_path, monkeypatch) -> None:
    import birdshield.attack_io as files

    src = tmp_path / "in"
    _files(src, ["Bird.jpg", "bird.png", "sub/x.jpg"])
    assert files._ignores_case(tmp_path) is False  # this machine's temporary folder tells case apart
    monkeypatch.setattr(files, "_ignores_case", lambda folder: True)
    outs = [d.name for _, d in files.output_names([src], src / "SUB")]
    assert outs == ["Bird.png", "bird_1.png"]  # sub/x.jpg is under --out (other case): left out
    monkeypatch.undo()
    assert sorted(d.name for _, d in files.output_names([src], tmp_path / "out")) == [
        "Bird.png", "bird.png", "x.png"
    ]  # fmt: skip


def test_case_probe_answers_for_the_folders_file_system(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    import birdshield.attack_io as files

    real_exists = Path.exists
    seen = []

    def case_blind_exists(self: Path) -> bool:  # what a case-insensitive disk answers
        seen.append(self.name)
        return any(p.name.casefold() == self.name.casefold() for p in self.parent.iterdir())

    monkeypatch.setattr(Path, "exists", case_blind_exists)
    assert files._ignores_case(tmp_path / "not" / "yet") is True  # probed in the nearest existing folder
    assert seen and seen[0].startswith(".BIRDSHIELD-cASE-pROBE-")
    monkeypatch.setattr(Path, "exists", real_exists)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
