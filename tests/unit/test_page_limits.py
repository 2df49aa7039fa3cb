"""The page's own limits, checked by its handlers and helpers without a server: every parameter in range
(a client can call the API past the sliders), a time limit per job, a bounded scratch folder that a
killed server does not leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import torch
from conftest import REPO, TINY_CLASSES, textured_image
from torch import nn

from birdshield import models
from birdshield.app import actions, scratch
from birdshield.app.jobs import Cancelled, JobGuard, TimedOut
from birdshield.app.page import Page, Settings

pytestmark = pytest.mark.usefixtures("one_thread")


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tiny(image_size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = models.create_model(TINY_CLASSES, arch="test_efficientnet", weights=None, image_size=image_size)
    return model.eval()


def test_a_job_past_its_time_limit_stops_at_its_next_forward_pass_and_the_next_job_starts_afresh():
    model, clock = _tiny(), _Clock()
    guard = JobGuard(timeout_s=10, clock=clock)
    guard.watch(model)
    x = torch.rand(1, 3, 32, 32)
    with guard.job("visitor"):
        clock.now = 10.0  # exactly at the limit: still allowed
        model(x)
        clock.now = 10.5
        with pytest.raises(TimedOut, match="time limit of 10 s"):
            model(x)
    with guard.job("visitor"):  # its own 10 s, counted from its start
        clock.now = 20.0
        model(x)
    model(x)  # outside a job nothing is timed
    assert not issubclass(TimedOut, Cancelled)  # the page tells a timeout from the visitor's Stop
    with pytest.raises(ValueError, match="> 0"):
        JobGuard(timeout_s=0)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Page:
    """A page of one tiny model whose data folder has 3 test photos."""
    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(TINY_CLASSES):
        (root / "test" / name).mkdir(parents=True)
        textured_image(i, size=(40, 30)).save(root / "test" / name / "1.png")
    return Page([actions.Served("tiny", _tiny())], Settings(data_dir=root))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("upload") / "bird.png"
    textured_image(5, size=(40, 30)).save(path)
    return str(path)


ATTACK = {"attack": "pgd", "norm": "linf", "eps_255": 4, "eps_l2": 0.5, "steps": 2, "target": "untargeted"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 10**6}, "steps must be a whole number in 0..1000"),
        ({"steps": 2.5}, "steps must be a whole number in 0..1000"),
        ({"steps": float("nan")}, "steps must be a whole number in 0..1000"),
        ({"eps_255": 1e6}, "eps (Linf, in /255 grey levels) must be a number in 0..16"),
        ({"eps_255": -1}, "eps (Linf, in /255 grey levels) must be a number in 0..16"),
        ({"norm": "l2", "eps_l2": float("inf")}, "eps (L2) must be a number in 0..5"),
        ({"attack": "transfer"}, "Unknown attack transfer"),  # needs a surrogate the page does not have
        ({"attacked": "someone else's model"}, "No model called someone else's model"),
    ],
    ids=["steps-huge", "steps-fraction", "steps-nan", "eps-huge", "eps-below", "l2-inf", "attack", "model"],
)
def test_the_attack_handler_refuses_values_past_its_controls(page: Page, photo: str, changes, message):
    options = {**ATTACK, "attacked": "tiny", "early_stop": False, **changes}
    with pytest.raises(gr.Error) as e:
        page.attack(photo, **options, request=None)
    assert message in e.value.message


@pytest.mark.parametrize(
    ("transform", "param", "message"),
    [
        ("median", 201, "median: kernel must be a whole number in 1..15"),  # 3*H*W*201^2 floats
        ("median", 4, "median kernel must be an odd size in 1..15"),
        ("median", "3; rm -rf", "median: kernel must be a whole number in 1..15"),
        ("jpeg", 0, "jpeg: quality must be a whole number in 1..95"),
        ("bits", float("inf"), "bits: bits must be a whole number in 1..16"),
        ("smoothing", 0.25, "Unknown transform smoothing"),
    ],
)
def test_the_defend_handler_refuses_values_past_its_controls(
    page: Page, photo: str, transform, param, message
):
    with pytest.raises(gr.Error) as e:
        page.defend("photo", photo, None, transform, param, request=None)
    assert message in e.value.message


@pytest.mark.parametrize(
    ("sigma", "n", "message"),
    [
        (0.25, 10**7, "n noisy samples must be a whole number in 100..10000"),
        (0.25, 0, "n noisy samples must be a whole number in 100..10000"),
        (-1.0, 100, "noise sigma must be one of 0.12, 0.25, 0.5, 1"),
        (float("nan"), 100, "noise sigma must be one of"),
    ],
)
def test_the_certify_handler_refuses_values_past_its_controls(page: Page, photo: str, sigma, n, message):
    with pytest.raises(gr.Error) as e:
        page.certify("photo", photo, None, sigma, n, request=None)
    assert message in e.value.message
    with pytest.raises(gr.Error, match="n noisy samples"):
        page.estimate(float("inf"))


def test_values_inside_the_controls_still_run(page: Page, photo: str):
    view, top = page.defend("photo", photo, None, "median", 15, request=None)
    assert view.shape == (32, 32, 3) and top
    assert page.attack(photo, **ATTACK, attacked="tiny", early_stop=False, request=None)[3].endswith(".png")


def test_the_smoothing_estimate_warns_when_it_is_over_the_time_limit():
    model = _tiny()
    quick = Page([actions.Served("m", model, seconds_per_image=0.001)], Settings(job_timeout_s=300))
    slow = Page([actions.Served("m", model, seconds_per_image=0.1)], Settings(job_timeout_s=300))
    assert "limit" not in quick.estimate(1000)
    assert "over this page's limit of 300 s per job" in slow.estimate(10_000)


# ------------------------------------------------------------------------------------------- scratch


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_the_scratch_folder_keeps_only_the_newest_files_by_count_and_by_bytes(tmp_path: Path):
    box = scratch.Scratch(tmp_path, max_files=3, max_bytes=10_000)
    paths = [box.add("same name.png", bytes([i]) * 100) for i in range(5)]
    assert sorted(_files(box.root)) == paths[2:]  # equal names do not collide; the oldest went first
    assert paths[-1].read_bytes() == bytes([4]) * 100
    big = box.add("big.png", b"x" * 9_950)  # the bytes bound: 9,950 + 100 > 10,000
    assert sorted(_files(box.root)) == [big]
    huge = box.add("huge.png", b"y" * 20_000)  # over the bound alone: the newest file is still kept
    assert _files(box.root) == [huge]
    with pytest.raises(ValueError, match="plain file name"):
        box.add("../outside.png", b"")
    box.remove()
    assert not box.root.exists()


def test_picking_many_photos_and_attacking_keeps_the_pages_scratch_folder_bounded(page: Page, photo: str):
    for i in range(scratch.MAX_FILES + 8):
        page.pick_photo(page.photos[i % len(page.photos)])
    page.attack(photo, **ATTACK, attacked="tiny", early_stop=False, request=None)
    root = getattr(page.scratch, "root", page.scratch)
    assert len(_files(root)) == scratch.MAX_FILES


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_servers_scratch_folder_is_removed_by_the_next_start(tmp_path: Path):
    make = "from birdshield.app.scratch import Scratch; import sys, time; "
    make += "s = Scratch(sys.argv[1]); s.add('a.png', b'x'); print(s.root, flush=True); time.sleep(600)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(
        [sys.executable, "-c", make, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        left = Path(server.stdout.readline().strip())
        assert left.parent == tmp_path and _files(left)
        scratch.Scratch(tmp_path).remove()  # another server starts while the first still runs: kept
        assert left.is_dir()
    finally:
        server.send_signal(signal.SIGKILL)  # no atexit runs
        server.wait(timeout=30)
        server.stdout.close()
    assert left.is_dir()
    box = scratch.Scratch(tmp_path)
    assert not left.exists() and box.root.is_dir()
    box.remove()


def test_cleaning_up_spares_running_processes_links_and_other_folders(tmp_path: Path):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(ended.stdout)
    assert not _alive(dead)
    stale = tmp_path / f"{scratch.PREFIX}{dead}-abc123"
    running = tmp_path / f"{scratch.PREFIX}{os.getppid()}-abc123"
    other = tmp_path / f"{scratch.PREFIX}notes"
    target = tmp_path / "keep"
    link = tmp_path / f"{scratch.PREFIX}{dead}-link"
    for folder in (stale, running, other, target):
        folder.mkdir()
        (folder / "f.png").write_bytes(b"x")
    link.symlink_to(target)
    assert scratch.remove_stale(tmp_path) == [stale]
    assert not stale.exists() and _files(running) and _files(other) and _files(target) and link.is_symlink()
