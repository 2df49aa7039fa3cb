"""The errors a user can fix: the CLI prints them as one line (exit status 2) instead of a traceback.

Torch-free, so the CLI can name them without loading the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DataError(ValueError):
    """The dataset on disk has a structure problem; the message names the folder or file and the fix."""


class BadImageError(ValueError):
    """One image file cannot be used; ``str(e) == f"{path}: {reason}"``."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:
            # torch re-raises a DataLoader worker error as type(e)(text): keep the type; the text has it all
            self.path, self.reason = Path(), str(path)
            super().__init__(str(path))
            return
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Default exception pickling passes only str(e) back to __init__; DataLoader workers need both fields.
        return (type(self), (self.path, self.reason) if self.path.parts else (self.reason,))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file and what to do."""


class OutDirError(ValueError):
    """The report folder cannot be written, or the progress saved there belongs to another run."""


class SettingError(ValueError):
    """An environment variable or setting that cannot be used; the message names it and what it takes."""


USER_ERRORS: tuple[type[Exception], ...] = (
    SettingError,
    DataError,
    BadImageError,
    CheckpointError,
    OutDirError,
    FileNotFoundError,
)
