"""Atomic writes: a SIGKILL at any step of runtime.atomic_write_bytes leaves the old file or the new one,
never a truncated one; new files keep the user's umask (mkstemp alone would make them 0600)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from birdshield.runtime import atomic_write_bytes, current_umask

OLD, NEW = b"old contents\n" * 1000, b"new contents\n" * 5000

# Run in a fresh interpreter (runtime imports no torch: ~0.2 s), which SIGKILLs itself at STEP.
KILLER = r"""
import os, signal, sys, tempfile
import birdshield.runtime as rt

step, target = sys.argv[1], sys.argv[2]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)

def after(module, name):
    real = getattr(module, name)
    def wrapper(*a, **k):
        result = real(*a, **k)
        die()
        return result
    setattr(module, name, wrapper)

class HalfWriter:  # writes half of what it is given, makes sure it is on disk, then dies
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def fileno(self):
        return self.f.fileno()
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        die()

if step == "after_mkstemp":
    after(tempfile, "mkstemp")
elif step == "after_chmod":
    after(os, "chmod")
elif step == "mid_write":
    real_fdopen = os.fdopen
    os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
elif step == "at_fsync":
    os.fsync = die
elif step == "at_replace":
    os.replace = die
elif step == "after_replace":
    after(os, "replace")
elif step == "at_folder_fsync":
    rt.fsync_folder = die
rt.atomic_write_bytes(target, NEW)
raise SystemExit("not killed")
"""
BEFORE_RENAME = ["after_mkstemp", "after_chmod", "mid_write", "at_fsync", "at_replace"]
AFTER_RENAME = ["after_replace", "at_folder_fsync"]


def _kill_while_writing(step: str, target: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    script = f"NEW = {NEW!r}\n{KILLER}"
    proc = subprocess.run([sys.executable, "-c", script, step, str(target)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


@pytest.mark.parametrize("step", BEFORE_RENAME + AFTER_RENAME)
def test_sigkill_at_any_step_never_leaves_a_truncated_file(tmp_path: Path, step: str) -> None:
    replaced, fresh = tmp_path / "replaced.bin", tmp_path / "fresh.bin"
    replaced.write_bytes(OLD)
    _kill_while_writing(step, replaced)
    _kill_while_writing(step, fresh)
    if step in BEFORE_RENAME:
        assert replaced.read_bytes() == OLD and not fresh.exists()
    else:
        assert replaced.read_bytes() == NEW and fresh.read_bytes() == NEW
    if step in ("mid_write", "at_fsync", "at_replace"):  # the half-written data exists, but only aside
        assert any(p.name.startswith(".replaced.bin.") for p in tmp_path.iterdir())


def test_new_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        atomic_write_bytes(tmp_path / "a.txt", b"x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "a.txt", b"y")  # replacing a file: the mode a new file gets
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(before)
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind
