"""The page's latency per action, measured through HTTP as a visitor's browser pays it.

    python benchmarks/bench_page.py [RUN_DIR ...] [--photo FILE] [--repeats 3] [--threads 1]

Starts `birdshield serve RUN_DIR ...` on 127.0.0.1 at a free port (no RUN_DIR: the ImageNet bird model),
then calls the page's own API endpoints with gradio_client (bundled with gradio; analytics off, so it
talks to nothing but 127.0.0.1): predict, FGSM, PGD-10 (no early stop: all 10 steps run) and randomized
smoothing with n = 100 (+100 selection samples). Each action runs once to warm up, then --repeats times;
the median wall time of a call is printed next to its target. A call's time includes uploading the photo
and the page's own work (decode, resize, every served model's answer, PNG encoding). The photo defaults to
birds-mini's test/BLUE JAY/1.jpg (``$BIRDSHIELD_SHARED/data/birds-mini``, else ``<repo>/../shared``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio_client too, on import

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDSHIELD_SHARED", REPO.parent / "shared"))
DEFAULT_PHOTO = SHARED / "data" / "birds-mini" / "test" / "BLUE JAY" / "1.jpg"
TARGETS = {"predict": 1.0, "pgd-10": 10.0}  # seconds, from the acceptance list


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_page(runs: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    """`birdshield serve` in a subprocess; returns it and its URL once the page answers."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "birdshield.cli", "--threads", str(threads), "serve", *runs]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`birdshield serve` ended with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the page did not answer at {url}")


def _photo(path: str | None) -> Path:
    if path:
        return Path(path)
    if DEFAULT_PHOTO.is_file():
        return DEFAULT_PHOTO
    from PIL import Image

    made = Path(tempfile.mkdtemp()) / "photo.png"  # no shared photos: a smooth synthetic one
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(made)
    return made


def actions(client, photo) -> dict[str, Callable[[], object]]:
    """The timed calls, by the names printed."""
    attack = {"path": photo, "norm": "linf", "eps_255": 4, "early_stop": False, "api_name": "/attack"}
    return {
        "predict": lambda: client.predict(path=photo, api_name="/predict"),
        "fgsm": lambda: client.predict(attack="fgsm", steps=0, **attack),
        "pgd-10": lambda: client.predict(attack="pgd", steps=10, **attack),
        "smoothing n=100": lambda: client.predict(
            source="photo", path=photo, adv_path=None, sigma=0.25, n=100, api_name="/certify"
        ),
    }


def median_seconds(call: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    call()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="runs to serve (default: ImageNet birds)")
    parser.add_argument("--photo", help="photo to upload (default: birds-mini test/BLUE JAY/1.jpg)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per action (after a warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the page")
    parser.add_argument("--only", help="comma-separated actions to time (default: all)")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file

    proc, url = start_page(args.runs, args.threads)
    try:
        client = Client(url, verbose=False, analytics_enabled=False)
        calls = actions(client, handle_file(str(_photo(args.photo))))
        chosen = args.only.split(",") if args.only else list(calls)
        print(f"page: {url} serving {args.runs or ['ImageNet birds']}, {args.threads} torch thread(s)")
        print(f"{'action':<18}{'median s':>10}{'target s':>10}  all s")
        for name in chosen:
            median, times = median_seconds(calls[name], args.repeats)
            target = TARGETS.get(name)
            verdict = "" if target is None else ("  ok" if median < target else "  OVER TARGET")
            shown = f"{target:>10.1f}" if target else f"{'-':>10}"
            print(f"{name:<18}{median:>10.2f}{shown}  {', '.join(f'{t:.2f}' for t in times)}{verdict}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
