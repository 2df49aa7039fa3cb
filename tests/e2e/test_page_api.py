"""The served page through HTTP alone, as a client that skips the browser and its sliders: the page's own
limits hold on the server. One page runs in this process (`app.page.launch`, default address) with a tiny
model slowed to at least 50 ms a forward pass, so a long job is long on any machine, a 1 MB upload cap and
a 3 s time limit per job; Gradio's upload folder is a temporary folder of this module."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import torch
from helpers import REPO, TINY_CLASSES, textured_image
from torch import Tensor, nn

from birdshield import models

JOB_TIMEOUT_S = 3.0
MAX_UPLOAD_MB = 1.0
FILE = {"_type": "gradio.FileData"}


class _Slow(nn.Module):
    """A tiny model whose every forward pass takes at least 50 ms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = models.create_model(TINY_CLASSES, arch="test_efficientnet", weights=None, image_size=32)
        self.inner.eval()
        self.class_names, self.image_size = self.inner.class_names, self.inner.image_size

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(0.05)
        return self.inner(x)


class Page(NamedTuple):
    url: str
    uploads: Path  # Gradio's upload folder


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    uploads = tmp_path_factory.mktemp("gradio_uploads")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(uploads))  # read by Gradio on each use
        from birdshield.app import actions
        from birdshield.app.page import Settings, launch

        settings = Settings(max_upload_mb=MAX_UPLOAD_MB, job_timeout_s=JOB_TIMEOUT_S)
        blocks, url = launch(
            [actions.Served("slow", _Slow().eval())], settings, port=_free_port(), block=False
        )
        try:
            yield Page(url, uploads)
        finally:
            blocks.close()
            torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload(page: Page, name: str, content: bytes) -> httpx.Response:
    """POST one file to Gradio's own upload endpoint, as the browser does."""
    return httpx.post(f"{page.url}gradio_api/upload", files={"files": (name, content)}, timeout=60)


def _call(page: Page, api_name: str, data: list[Any]) -> tuple[str, Any]:
    """('complete', outputs) or ('error', message) of one call to a page's API endpoint (Gradio's /call)."""
    posted = httpx.post(f"{page.url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    posted.raise_for_status()
    answer = httpx.get(f"{page.url}gradio_api/call/{api_name}/{posted.json()['event_id']}", timeout=300)
    events = [block.split("\n", 1) for block in answer.text.strip().split("\n\n")]
    event, data_line = [e for e in events if e[0] in ("event: complete", "event: error")][-1]
    payload = json.loads(data_line.removeprefix("data: "))
    return event.removeprefix("event: "), payload.get("error") if isinstance(payload, dict) else payload


@pytest.fixture(scope="module")
def photo(page: Page) -> dict[str, Any]:
    """A photo uploaded the ordinary way, as the FileData the page's endpoints take."""
    import io

    buf = io.BytesIO()
    textured_image(3, size=(60, 45)).save(buf, format="PNG")
    uploaded = _upload(page, "bird.png", buf.getvalue())
    uploaded.raise_for_status()
    return {"path": uploaded.json()[0], "orig_name": "bird.png", "meta": FILE}


def test_an_uploaded_photo_is_predicted(page: Page, photo):
    status, outputs = _call(page, "predict", [photo])
    assert status == "complete" and outputs[0].startswith("Photo **bird.png**")


# ---------------------------------------------------------------------------------- parameters, time


def test_a_median_kernel_past_the_bound_is_refused_by_the_server(page: Page, photo):
    status, message = _call(page, "defend", ["photo", photo, None, "median", 201])  # ~24 GB at 224 px
    assert (status, message) == ("error", "median: kernel must be a whole number in 1..15, got 201.")
    assert _call(page, "defend", ["photo", photo, None, "median", 15])[0] == "complete"


def test_a_long_attack_and_a_long_vote_stop_at_the_time_limit_and_the_next_job_runs(page: Page, photo):
    limit = f"ran past this page's limit of {JOB_TIMEOUT_S:g} s per job"
    attack = [photo, "pgd", "linf", 4, 0.5, 1000, "untargeted", "slow", False]  # >= 2 x 50 s of forwards
    status, message = _call(page, "attack", attack)
    assert status == "error" and limit in message and "\n" not in message
    status, message = _call(page, "certify", ["photo", photo, None, 0.25, 10_000])  # >= 5 s of forwards
    assert status == "error" and limit in message
    assert _call(page, "predict", [photo])[0] == "complete"


# ---------------------------------------------------------------------------------- file data as URL


class _PhotoHost(NamedTuple):
    url: str
    requests: list[str]


@pytest.fixture
def photo_host() -> Iterator[_PhotoHost]:
    """A small HTTP server on 127.0.0.1 that serves a photo at any path and records every request."""
    import io

    buf = io.BytesIO()
    textured_image(4).save(buf, format="PNG")
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(buf.getvalue())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _PhotoHost(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


def test_file_data_given_as_a_url_is_refused_and_never_fetched(page: Page, photo, photo_host, monkeypatch):
    import safehttpx

    # Gradio downloads such a URL when its host is public (its SSRF check asks dns.google about a private
    # one first). A test must not reach a public host, so the check is told this local one is public.
    monkeypatch.setattr(safehttpx, "is_public_ip", lambda ip: True)
    url = f"{photo_host.url}/bird.png"
    remote = {"path": url, "url": url, "orig_name": "bird.png", "meta": FILE}
    calls = {
        "predict": [remote],
        "defend": ["photo", remote, None, "jpeg", 75],
        "certify": ["adversarial", photo, remote, 0.25, 100],
        "attack": [remote, "fgsm", "linf", 4, 0.5, 0, "untargeted", "slow", False],
    }
    for api_name, data in calls.items():
        status, message = _call(page, api_name, data)
        assert status == "error" and "given as a URL is refused" in message, api_name
    relayed = httpx.get(f"{page.url}gradio_api/file={url}", timeout=30)  # Gradio's /file= relays URLs
    assert relayed.status_code == 403
    assert photo_host.requests == []


def test_a_path_on_the_server_is_refused(page: Page, tmp_path: Path):
    elsewhere = tmp_path / "private.png"
    textured_image(2).save(elsewhere)
    status, message = _call(page, "predict", [{"path": str(elsewhere), "meta": FILE}])
    assert status == "error" and "given as a path on the server is refused" in message


# ---------------------------------------------------------------------------------- address, upload cap


def _other_local_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (the default route's), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: no packet is sent; the kernel only picks the route
            address = s.getsockname()[0]
        except OSError:
            address = None
    if not address or address.startswith("127.") or address == "0.0.0.0":
        try:
            address = socket.gethostbyname(socket.gethostname())
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def test_the_default_address_is_127_0_0_1_only(page: Page):
    from birdshield.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"  # the CLI passes launch's default on
    port = int(page.url.rstrip("/").rsplit(":", 1)[1])
    assert page.url.startswith("http://127.0.0.1:") and _connects("127.0.0.1", port)
    if sys.platform.startswith("linux"):  # all of 127/8 is this machine: bound to 0.0.0.0, .2 would answer
        assert not _connects("127.0.0.2", port)
    other = _other_local_address()
    if other is None:
        pytest.skip("this machine has no address but loopback")
    with socket.socket() as control:  # the address takes connections from here when something listens
        control.bind((other, 0))
        control.listen()
        assert _connects(other, control.getsockname()[1])
    assert not _connects(other, port), f"the page answers on {other}"


def test_the_upload_cap_holds_at_gradios_own_upload_endpoint(page: Page):
    cap = int(MAX_UPLOAD_MB * 2**20)
    small = _upload(page, "small.jpg", b"s" * (cap // 2))
    assert small.status_code == 200
    assert Path(small.json()[0]).parent.parent == page.uploads  # the folder looked at below is the right one
    big = _upload(page, "big.jpg", b"b" * (cap + 64 * 1024))
    assert big.status_code == 413
    sizes = [p.stat().st_size for p in page.uploads.rglob("*") if p.is_file()]
    assert max(sizes) <= cap
    assert not any(p.name == "big.jpg" for p in page.uploads.rglob("*"))


def test_serve_stopped_by_sigterm_closes_and_removes_its_scratch_folder(tmp_path: Path):
    """The CLI with no RUN_DIR (the offline ImageNet bird model), its temp folder under tmp_path."""

    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), GRADIO_TEMP_DIR=str(tmp_path / "g"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "birdshield.cli", "--threads", "1", "serve", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _connects("127.0.0.1", port):
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.3)
        scratch = list(tmp_path.glob(f"birdshield-page-{server.pid}-*"))
        assert len(scratch) == 1 and scratch[0].is_dir()
    finally:
        server.terminate()  # SIGTERM
        code = server.wait(timeout=60)
        server.stderr.close()
    assert code in (0, 130) and not scratch[0].exists()  # as after Ctrl+C (130: before the page's loop)
