"""The page's scratch folder: bounded by count and bytes, and a killed server's folder removed by the next
start, sparing running servers, links and other folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, files_under

from birdshield.app import scratch


def test_the_scratch_folder_keeps_only_the_newest_files_by_count_and_by_bytes(tmp_path: Path):
    box = scratch.Scratch(tmp_path, max_files=3, max_bytes=10_000)
    paths = [box.add("same name.png", bytes([i]) * 100) for i in range(5)]
    assert sorted(files_under(box.root)) == paths[2:]  # equal names do not collide; the oldest went first
    assert paths[-1].read_bytes() == bytes([4]) * 100
    big = box.add("big.png", b"x" * 9_950)  # the bytes bound: 9,950 + 100 > 10,000
    assert sorted(files_under(box.root)) == [big]
    huge = box.add("huge.png", b"y" * 20_000)  # over the bound alone: the newest file is still kept
    assert files_under(box.root) == [huge]
    with pytest.raises(ValueError, match="plain file name"):
        box.add("../outside.png", b"")
    box.remove()
    assert not box.root.exists()


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
        assert left.parent == tmp_path and files_under(left)
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
    assert (
        not stale.exists()
        and files_under(running)
        and files_under(other)
        and files_under(target)
        and link.is_symlink()
    )
