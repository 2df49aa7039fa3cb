"""Process-level settings: device choice, the CPU allocator fix, progress bars, atomic writes.

Torch is imported only by the functions that need it, so the atomic writers cost nothing to import.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # as M_TRIM_THRESHOLD: never give the heap's top back to the OS (man mallopt)
_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning every large tensor buffer to the OS.

    Without this, each conv activation is mmap'ed and unmapped per batch: page faults by the million and a
    CPU forward/backward several times slower. Like MALLOC_MMAP_MAX_=0 with trimming off (-1 is
    mallopt's "never trim": the environment variable's huge threshold does not fit mallopt's C int).
    Returns False where glibc is not present.

    One arena for every thread: memory a decoding thread frees is reused by the model's thread instead of
    being kept aside in the thread's own arena. Call it before starting threads: a thread that already has
    an arena of its own keeps it.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER), (_M_ARENA_MAX, 1))
        )
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok


@contextlib.contextmanager
def allocator_for_onnxruntime() -> Iterator[None]:
    """glibc's own handling of large blocks (mmap, trimming) while only onnxruntime computes.

    The tuning above keeps every block on the one heap, for torch eager, which frees and asks again for
    its activations every batch. onnxruntime keeps buffers in its own arena; with its threads and a data
    loader's batches on that untrimmed heap, the heap grows without bound over a long feature cache. The
    tuning applies again after the block.
    """
    if not _allocator_tuned:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)


def preload(*modules: str) -> threading.Thread:
    """Import third-party `modules` in a daemon thread: what a long job needs only at its end (matplotlib
    for the plots, scipy for the intervals: ~1.5 s) loads while the job computes, not after it. Failures
    are left for the real import to report. Only leaf libraries: birdshield's own modules import each
    other, and two threads importing one cycle from both ends would deadlock."""

    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="birdshield-preload", daemon=True)
    thread.start()
    return thread


def set_threads(n: int) -> None:
    """CPU threads for torch's intra-op work (fewer than the cores on a CPU busy with other processes)."""
    import torch

    torch.set_num_threads(n)


def pick_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its parameters' device; CPU for a model without any (an ONNX session)."""
    import torch

    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def progress(iterable: Iterable, **kwargs: Any) -> tqdm:
    """A progress bar that stays silent when stderr is not a terminal (CI, logs, pipes)."""
    return tqdm(iterable, disable=not sys.stderr.isatty(), dynamic_ncols=True, leave=False, **kwargs)


@contextlib.contextmanager
def stage_progress(desc: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress bar driven by `on_progress(stage, images_done, total)` callbacks (evaluate, certify).

    Off a terminal (a log file, nohup) the bar is silent, so each new stage is printed as one line
    instead: an hours-long job in a log still says where it is.
    """
    bar = progress(None, desc=desc, unit="img")
    start, last = time.perf_counter(), ""

    def update(stage: str, done: int, total: int | None) -> None:
        nonlocal last
        bar.total, bar.n = total, done
        bar.set_description_str(stage)
        if bar.disable and stage != last:
            last = stage
            of = f"/{total}" if total is not None else ""
            minutes = (time.perf_counter() - start) / 60
            print(f"{desc}: {stage} ({done}{of} images done, {minutes:.1f} min)", file=sys.stderr, flush=True)

    try:
        yield update
    finally:
        bar.close()


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One writer per cache folder: a second process wanting the same folder waits for the first, then
    reads what it wrote (an advisory lock on folder/lock)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write then rename, so a kill mid-write leaves the old file intact, never a half-written one.

    The file gets the mode any new file gets (0666 less the umask), not mkstemp's private 0600; the folder
    is synced after the rename so the new name survives a power cut too (where the OS allows it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
