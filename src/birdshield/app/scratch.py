"""The page's scratch folder: the files it hands to Gradio (attack PNGs, copies of picked test photos).

Gradio copies a returned file into its own cache as soon as the handler returns, so only the newest few
are kept (by count and by bytes). The folder is named after the serving process
(`birdshield-page-PID-XXXX` in the temp folder): it is removed when the process exits, and a later start
removes the folders of processes that are gone (a killed server), so none is left behind for good.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path

PREFIX = "birdshield-page-"
MAX_FILES = 32
MAX_BYTES = 256 * 2**20
_OWNED = re.compile(rf"{re.escape(PREFIX)}(\d+)-\w+")


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (True when that cannot be told: nothing is removed then)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove the scratch folders under `parent` whose process is gone; returns them. Only this user's
    real folders named by this module are touched (never a link, never another user's folder)."""
    removed = []
    for path in sorted(parent.glob(f"{PREFIX}*")):
        match = _OWNED.fullmatch(path.name)
        if not match or int(match[1]) == os.getpid() or path.is_symlink() or not path.is_dir():
            continue
        try:
            if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
                continue
        except OSError:  # removed meanwhile by another starting server
            continue
        if not _alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class Scratch:
    """A per-process folder of at most `max_files` files and `max_bytes` bytes (the newest file is always
    kept): adding a file removes the oldest ones beyond either bound."""

    def __init__(
        self, parent: Path | None = None, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES
    ) -> None:
        parent = Path(parent or tempfile.gettempdir())
        remove_stale(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
        self.max_files, self.max_bytes = max_files, max_bytes
        self._kept: deque[tuple[Path, int]] = deque()  # (folder, bytes), oldest first
        self._bytes = self._added = 0
        self._lock = threading.Lock()
        atexit.register(self.remove)

    def add(self, name: str, content: bytes) -> Path:
        """Write `content` as a file called `name` (its own folder, so equal names do not collide)."""
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        with self._lock:
            self._added += 1
            folder = self.root / f"{self._added:08d}"
            folder.mkdir()
            (folder / name).write_bytes(content)
            self._kept.append((folder, len(content)))
            self._bytes += len(content)
            while len(self._kept) > 1 and (len(self._kept) > self.max_files or self._bytes > self.max_bytes):
                oldest, size = self._kept.popleft()
                shutil.rmtree(oldest, ignore_errors=True)
                self._bytes -= size
        return folder / name

    def remove(self) -> None:
        """Remove the folder and everything in it (at exit, or when the page is closed)."""
        shutil.rmtree(self.root, ignore_errors=True)
