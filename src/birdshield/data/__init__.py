"""Datasets on disk, as a package (being split out of the former data.py, now layouts.py)."""

from __future__ import annotations

from .layouts import *  # noqa: F403
from .layouts import __all__ as __all__
