"""The page in a real headless browser (Debian's chromium driven by Playwright): `birdshield serve` on
127.0.0.1 at a free port, serving a model trained in this session on a few birds-mini photos per species
(or conftest's tiny run where the shared photos are absent). Every request the page makes is recorded and
must go to 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import pytest
from helpers import BIRDS_MINI, REPO, TINY_CLASSES

CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

SPECIES = "BLUE JAY"  # the birds-mini photo the page must name: test/BLUE JAY/1.jpg
TRAIN_PER_SPECIES, VALID_PER_SPECIES = 5, 1  # a linear probe on 150 photos: ~15 s on one CPU thread
TIMEOUT_MS = 120_000


def _subset(root: Path, out: Path) -> Path:
    """A smaller copy of a Kaggle-layout dataset (links, not copies): the first photos of each species."""
    for split, keep in (("train", TRAIN_PER_SPECIES), ("valid", VALID_PER_SPECIES), ("test", 1)):
        for species in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            (out / split / species.name).mkdir(parents=True)
            for photo in sorted(species.iterdir())[:keep]:
                (out / split / species.name / photo.name).symlink_to(photo)
    return out


class Served(NamedTuple):
    run: Path
    photo: Path
    species: str  # the photo's
    eps_255: int  # a PGD radius that fools the run on that photo


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, request) -> Served:
    if not BIRDS_MINI.is_dir():  # a tiny model whose classes differ by tint: 4/255 barely moves it
        photo = request.getfixturevalue("tiny_data") / "test" / TINY_CLASSES[2] / "1.jpg"
        return Served(request.getfixturevalue("tiny_run"), photo, TINY_CLASSES[2], 16)
    import torch

    from birdshield.training import config_from_options, train

    data = _subset(BIRDS_MINI, tmp_path_factory.mktemp("birds_subset"))
    run = tmp_path_factory.mktemp("page_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_options(str(data), str(run), depth="probe", epochs=1, workers=0))
    finally:
        torch.set_num_threads(threads)
    return Served(run, BIRDS_MINI / "test" / SPECIES / "1.jpg", SPECIES, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`birdshield serve` ended with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the page did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run = served.run
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    reports = tmp_path_factory.mktemp("reports")
    cmd = [sys.executable, "-m", "birdshield.cli", "--threads", "1", "serve", str(run), "--port", str(port)]
    cmd += ["--reports", str(reports)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server, with `page.requests` listing every URL it asked for."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.wait_for_load_state("networkidle")
    yield page
    context.close()


def _upload(page, path: Path) -> None:
    clear = page.locator("#photo").get_by_role("button", name="Clear")
    if clear.count():
        clear.click()
    page.set_input_files("#photo input[type=file]", str(path))


def _status(page, starts: str) -> str:
    """The status line once it starts with `starts` (it changes as the upload is judged)."""
    page.locator("#status").get_by_text(re.compile(f"^⚠? ?{re.escape(starts)}")).wait_for()
    return page.locator("#status").inner_text()


def _top(page, selector: str) -> str:
    return page.locator(f"{selector} [data-testid=label-output-value]").first.inner_text()


def _only_local(requests: list[str]) -> None:
    assert requests, "no request recorded"
    elsewhere = [u for u in requests if urlparse(u).scheme not in ("data", "blob")]
    elsewhere = [u for u in elsewhere if urlparse(u).hostname != "127.0.0.1"]
    assert not elsewhere, f"the page asked for {elsewhere[:5]}"


def test_a_real_photo_gets_its_species(page, served: Served):
    _upload(page, served.photo)
    assert _status(page, f"Photo {served.photo.name}")
    page.locator(".top [data-testid=label-output-value]").wait_for()
    assert _top(page, ".top") == served.species
    _only_local(page.requests)


def test_pgd_at_4_255_changes_the_standard_models_answer(page, served: Served):
    _upload(page, served.photo)
    page.locator(".top [data-testid=label-output-value]").wait_for()
    page.get_by_role("tab", name="Attack").click()
    assert page.locator("#attack-name input").input_value() == "pgd"
    eps = page.get_by_label("number input for eps (Linf), in /255 grey levels")
    assert eps.input_value() == "4"
    if served.eps_255 != 4:
        eps.fill(str(served.eps_255))
        eps.press("Enter")
    page.locator("#run-attack").click()
    summary = page.locator("#attack-summary")
    summary.get_by_text("Attack time").wait_for()
    assert page.locator("#adversarial img").count() == 1
    text = summary.inner_text()
    assert f"away from {served.species}" in text and f"Linf {served.eps_255}.00/255" in text
    assert _top(page, ".adv-top") != served.species
    _only_local(page.requests)


def test_bad_uploads_are_explained_and_the_next_photo_still_works(page, served: Served, tmp_path: Path):
    from PIL import Image

    truncated, text, bomb = tmp_path / "cut.jpg", tmp_path / "notes.jpg", tmp_path / "bomb.png"
    truncated.write_bytes(served.photo.read_bytes()[:400])  # a JPEG cut short
    text.write_text("not a photo")
    Image.new("1", (12_000, 10_000)).save(bomb)  # 120 megapixels in a few kB: a decompression bomb
    bad = {
        truncated: "truncated or corrupt image data",
        text: "not an image file",
        bomb: "image too large: 12000 x 10000 pixels",
    }
    for path, reason in bad.items():
        _upload(page, path)
        assert f"Cannot use {path.name}: {reason}" in _status(page, f"Cannot use {path.name}")
        assert page.locator(".top [data-testid=label-output-value]").count() == 0
    _upload(page, served.photo)
    assert _status(page, f"Photo {served.photo.name}")
    page.locator(".top [data-testid=label-output-value]").wait_for()
    assert _top(page, ".top") == served.species
    _only_local(page.requests)
