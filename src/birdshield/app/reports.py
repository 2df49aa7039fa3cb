"""Report folders written by `evaluate` and `certify`, found and read under one root folder only.

The page lists the folders under its `--reports` root and opens only those: a name from a visitor is
checked against that list after resolving links, so no path outside the root is ever read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# The Markdown file each kind of report folder holds (evaluation/report.py, evaluation/certify.py).
REPORT_FILES = ("report.md", "certify.md")
MAX_DEPTH = 4  # how deep under the root report folders are looked for
MAX_FOLDERS = 500
MAX_PLOTS = 12
# Images in the Markdown are dropped: the page shows the folder's plots itself (a relative link would
# point at the page's own server), and a remote one would make the browser leave this machine.
_IMAGES = re.compile(r"!\[[^\]]*\]\([^)]*\)\s*|<img\b[^>]*>", re.IGNORECASE)


@dataclass
class Report:
    """A report folder's text (its Markdown tables) and its plots (PNG paths, by name)."""

    name: str
    markdown: str
    plots: list[Path]


def find_reports(root: str | Path) -> list[str]:
    """Report folders under root (holding report.md or certify.md), as sorted paths relative to root.

    Hidden folders and links that leave the root are skipped; at most MAX_DEPTH levels and MAX_FOLDERS
    folders are looked at, so a huge tree (e.g. the current folder being $HOME) cannot stall the page.
    """
    base = Path(root).resolve()
    found = []
    for seen, (folder, subdirs, files) in enumerate(os.walk(base, followlinks=False), start=1):
        here = Path(folder)
        depth = len(here.relative_to(base).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        if any(f in files for f in REPORT_FILES) and _inside(here, base):
            found.append(here.relative_to(base).as_posix() or ".")
        if seen >= MAX_FOLDERS:
            break
    return sorted(found)


def _inside(path: Path, base: Path) -> bool:
    return path.resolve().is_relative_to(base)


def open_report(root: str | Path, name: str) -> Report:
    """The report folder `name` (as `find_reports` lists it) under root; ValueError for any other name."""
    base = Path(root).resolve()
    if name not in find_reports(base):
        raise ValueError(f"no report folder {name!r} under {base}")
    folder = (base / name).resolve()
    if not _inside(folder, base):
        raise ValueError(f"{name!r} is outside {base}")
    files = [folder / f for f in REPORT_FILES]
    texts = [f.read_text(errors="replace") for f in files if f.is_file() and _inside(f, base)]
    plots = sorted(p for p in folder.glob("*.png") if p.is_file() and _inside(p, base))[:MAX_PLOTS]
    markdown = _IMAGES.sub("", "\n\n".join(texts))
    return Report(name=name, markdown=markdown, plots=plots)
