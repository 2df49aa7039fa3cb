"""`birdshield serve`: the page (upload a photo, attack it, defend it, read reports) on this machine."""

from __future__ import annotations

import argparse
import math
import signal
import threading
from pathlib import Path

from . import options

LOCAL = "127.0.0.1"


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = options.command(
        sub,
        "serve",
        help="the page: upload a bird photo, attack it, defend it, compare models, read reports",
        description="Serve a web page on this machine: upload a bird photo (or pick one from --data's test "
        "split); see each model's top-5 species; attack it (FGSM, PGD, APGD, Square, CW) and see every "
        "model's answer on the adversarial image; defend with input transforms or randomized smoothing "
        "(vote, abstention, certified L2 radius); open the reports `evaluate` and `certify` wrote. Without "
        "a RUN_DIR the offline ImageNet backbone names its 59 bird classes, so no dataset is needed; with "
        "several (e.g. a standard and a robust run) every panel shows them side by side. One job runs at "
        "a time, and one still running after --job-timeout seconds is stopped. Nothing leaves the machine: "
        "no analytics, no share link, assets from the installed wheel, file data taken only as uploads (a "
        "URL is refused, never fetched).",
    )
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run directories to serve side by side; the keyword imagenet-birds adds the ImageNet bird model",
    )
    p.add_argument("--data", metavar="DIR", help="dataset root whose test split (or folder) offers photos")
    p.add_argument(
        "--host",
        default=LOCAL,
        help="address to listen on; anything but 127.0.0.1/localhost makes the page reachable from other "
        "machines (a warning is printed: it has no login)",
    )
    p.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: the first free one from 7860)"
    )
    p.add_argument(
        "--reports",
        default=".",
        metavar="DIR",
        help="folder whose report folders (from evaluate/certify) the Reports tab lists; nothing outside "
        "it is opened",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest photo accepted, in MB (2**20 bytes)"
    )
    p.add_argument(
        "--job-timeout",
        type=float,
        default=300,
        metavar="SECONDS",
        help="stop a job (an attack, a smoothing vote) still running this long after it started, and tell "
        "the visitor why; time waiting for the one job slot does not count",
    )
    options.add_device(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    if not args.max_upload_mb > 0:
        raise options.UsageError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not 0 < args.job_timeout < math.inf:
        raise options.UsageError(f"--job-timeout must be a number of seconds > 0, got {args.job_timeout}")
    if args.data and not Path(args.data).is_dir():
        raise options.UsageError(f"--data {args.data}: not a folder")
    if not Path(args.reports).is_dir():
        raise options.UsageError(f"--reports {args.reports}: not a folder")
    from ..app import actions
    from ..app.page import Settings, launch
    from ..runtime import tune_cpu_allocator

    tune_cpu_allocator()
    served = actions.load_models(args.run_dirs, args.device)
    settings = Settings(
        data_dir=Path(args.data) if args.data else None,
        reports_dir=Path(args.reports),
        max_upload_mb=args.max_upload_mb,
        job_timeout_s=args.job_timeout,
    )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    launch(served, settings, host=args.host, port=args.port)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a plain `kill`, a service manager's stop) ends the page as Ctrl+C does, so the server
    closes and its scratch folder is removed at exit."""
    raise KeyboardInterrupt
