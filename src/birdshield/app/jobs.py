"""One job at a time, and a Stop button that stops it: the running job's models check a flag on every
forward pass, so an attack or a smoothing vote ends within one batch of the click."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class Cancelled(Exception):
    """The job was stopped from the page."""


class JobGuard:
    """Tracks the running job's owner (a page session) and whether that owner asked it to stop.

    Only the session that started a job can stop it, so one visitor cannot cancel another's job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: str | None = None
        self._stop = threading.Event()

    @contextmanager
    def job(self, owner: str) -> Iterator[None]:
        """Mark `owner`'s job as the running one for the duration of the block."""
        with self._lock:
            self._owner = owner
            self._stop.clear()
        try:
            yield
        finally:
            with self._lock:
                self._owner = None
                self._stop.clear()

    def stop(self, owner: str) -> bool:
        """Ask the running job to stop if `owner` started it; True if it was asked."""
        with self._lock:
            if self._owner is None or self._owner != owner:
                return False
            self._stop.set()
            return True

    def check(self) -> None:
        if self._stop.is_set():
            raise Cancelled("stopped")

    def watch(self, model: nn.Module) -> None:
        """Make every forward pass of `model` raise Cancelled once a stop was asked."""
        model.register_forward_pre_hook(lambda module, args: self.check())
