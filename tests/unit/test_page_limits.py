"""The page's own limits, checked by its handlers and helpers without a server: every parameter in range
(a client can call the API past the sliders), a time limit per job, a bounded scratch folder that a
killed server does not leave behind."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from helpers import TINY_CLASSES, files_under, textured_image, tiny_model

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


def test_a_job_past_its_time_limit_stops_at_its_next_forward_pass_and_the_next_job_starts_afresh():
    model, clock = tiny_model(), _Clock()
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
    return Page([actions.Served("tiny", tiny_model())], Settings(data_dir=root))


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
    model = tiny_model()
    quick = Page([actions.Served("m", model, seconds_per_image=0.001)], Settings(job_timeout_s=300))
    slow = Page([actions.Served("m", model, seconds_per_image=0.1)], Settings(job_timeout_s=300))
    assert "limit" not in quick.estimate(1000)
    assert "over this page's limit of 300 s per job" in slow.estimate(10_000)


# ------------------------------------------------------------------------------------------- scratch


def test_picking_many_photos_and_attacking_keeps_the_pages_scratch_folder_bounded(page: Page, photo: str):
    for i in range(scratch.MAX_FILES + 8):
        page.pick_photo(page.photos[i % len(page.photos)])
    page.attack(photo, **ATTACK, attacked="tiny", early_stop=False, request=None)
    root = getattr(page.scratch, "root", page.scratch)
    assert len(files_under(root)) == scratch.MAX_FILES
