"""One job at a time, a Stop button that stops it, and a time limit per job: the running job's models check
a flag and a deadline on every forward pass, so an attack or a smoothing vote ends within one batch of the
click or of the deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


class Cancelled(Exception):
    """The job was stopped from the page."""


class TimedOut(Exception):
    """The job ran past the page's time limit per job (not a Cancelled: the visitor did not ask)."""


class JobGuard:
    """Tracks the running job's owner (a page session), whether that owner asked it to stop, and when it
    must end.

    Only the session that started a job can stop it, so one visitor cannot cancel another's job. With
    `timeout_s`, a job still running that many seconds after it started raises TimedOut at its next
    forward pass (time waiting in the queue does not count). `clock` is for tests.
    """

    def __init__(self, timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"a job's time limit must be > 0 seconds, got {timeout_s}")
        self.timeout_s, self._clock = timeout_s, clock
        self._lock = threading.Lock()
        self._owner: str | None = None
        self._deadline: float | None = None
        self._stop = threading.Event()

    @contextmanager
    def job(self, owner: str) -> Iterator[None]:
        """Mark `owner`'s job as the running one for the duration of the block; its time starts now."""
        with self._lock:
            self._owner = owner
            self._deadline = None if self.timeout_s is None else self._clock() + self.timeout_s
            self._stop.clear()
        try:
            yield
        finally:
            with self._lock:
                self._owner = None
                self._deadline = None
                self._stop.clear()

    def stop(self, owner: str) -> bool:
        """Ask the running job to stop if `owner` started it; True if it was asked."""
        with self._lock:
            if self._owner is None or self._owner != owner:
                return False
            self._stop.set()
            return True

    def check(self) -> None:
        """Cancelled once a stop was asked, TimedOut once the running job is past its deadline."""
        if self._stop.is_set():
            raise Cancelled("stopped")
        deadline = self._deadline
        if deadline is not None and self._clock() > deadline:
            raise TimedOut(f"ran past the time limit of {self.timeout_s:g} s per job")

    def watch(self, model: nn.Module) -> None:
        """Make every forward pass of `model` raise Cancelled once a stop was asked, TimedOut once the
        running job is past its deadline."""
        model.register_forward_pre_hook(lambda module, args: self.check())
