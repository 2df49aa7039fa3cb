"""The predictions CSV `predict` writes, built row by row as the predictions are made, so that none is lost.

Rows go to ``OUT.partial`` a batch at a time, flushed at once: a kill or Ctrl-C keeps every finished batch,
and the name says the file is incomplete. ``OUT.partial.json`` beside it holds what made the rows (model,
defence, columns). When every image has its row, the complete CSV replaces OUT in one rename (the 'grading'
format, sorted by numeric file name, is made from the rows then): OUT is never half-written. ``resume``
continues a partial file: its rows are checked against the image list in order and kept, a row cut short
by a kill is dropped, and the final file is byte for byte the one an uninterrupted run writes.

File names that are not valid UTF-8 reach Python as surrogate escapes of their bytes (os.fsdecode); they are
written back as those same bytes (UTF-8 with errors="surrogateescape"), so ``os.fsencode(cell)`` of an image
cell is the file's name. Every other character is plain UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutDirError
from .reporting.tables import csv_text, spreadsheet_safe
from .runtime import atomic_write_bytes, atomic_write_json, fsync_folder

__all__ = ["PartialCSV", "StdoutCSV", "encode", "header", "partial_path", "to_csv", "write_csv"]

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
log = logging.getLogger("birdshield")


def encode(text: str) -> bytes:
    """CSV text to bytes: UTF-8, and the original bytes of file names that are not UTF-8."""
    return text.encode(**ENCODING)


# ------------------------------------------------------------------------------------------ the table


def header(top_k: int) -> list[str]:
    """image,species,confidence[,species_k,confidence_k],error"""
    names = ["image", "species", "confidence"]
    for i in range(2, top_k + 1):
        names += [f"species_{i}", f"confidence_{i}"]
    return [*names, "error"]


def row_cells(row: dict, top_k: int) -> list[str]:
    """One prediction (image, top [(species, confidence)], error) as the cells under ``header(top_k)``."""
    cells = [row["image"]]
    for i in range(top_k):
        name, p = row["top"][i] if i < len(row["top"]) else ("", None)
        cells += [name, "" if p is None else f"{p:.4f}"]
    return [*cells, row["error"]]


def _numeric_key(path: str) -> tuple:
    """Sort 2.jpg before 10.jpg, as the original grading file did; non-numeric names after, by name."""
    stem = Path(path).stem
    return (0, int(stem), path) if re.fullmatch(r"\d+", stem) else (1, 0, path)


def grading_text(pairs: Iterable[tuple[str, str]]) -> str:
    """The original project's image,specie file from (image path, top species) pairs, sorted by numeric
    file name."""
    ordered = sorted(pairs, key=lambda pair: _numeric_key(pair[0]))
    return csv_text([["image", "specie"], *([Path(image).name, species] for image, species in ordered)])


def to_csv(rows: list[dict], *, top_k: int = 1, grading: bool = False) -> str:
    """'csv': image,species,confidence[,species_k,confidence_k],error; 'grading': the original project's
    image,specie file sorted by numeric file name. Cells a spreadsheet would run are escaped (csv_text)."""
    if grading:
        return grading_text((r["image"], r["top"][0][0] if r["top"] else "") for r in rows)
    return csv_text([header(top_k), *(row_cells(r, top_k) for r in rows)])


def write_csv(rows: list[dict], out: Path, **kwargs: Any) -> None:
    atomic_write_bytes(Path(out), encode(to_csv(rows, **kwargs)))


# ------------------------------------------------------------------------------------------ streamed


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


class _Counts:
    """Rows written so far and the unreadable images among them, (path, error), for the summary."""

    def __init__(self) -> None:
        self.done = 0
        self.bad: list[tuple[str, str]] = []

    def _count(self, rows: Sequence[dict]) -> None:
        self.done += len(rows)
        self.bad += [(r["image"], r["error"]) for r in rows if r["error"]]


class PartialCSV(_Counts):
    """Predictions written to ``OUT.partial`` as they are made; ``finish`` makes OUT of them.

    ``settings`` (JSON data: what makes the rows, e.g. the model's fingerprint and the defence) is saved
    beside the partial file; ``resume`` keeps the rows of a partial file written with the same settings for
    the same first images, and refuses (OutDirError) one written otherwise. ``done`` rows are then there:
    predict ``images[done:]``. Used as a context manager, the file is closed however the block ends.
    """

    def __init__(
        self, out: Path, images: Sequence[Path], top_k: int, settings: dict[str, Any], resume: bool
    ) -> None:
        super().__init__()
        self.out, self.images, self.top_k = Path(out), images, top_k
        self.partial, self.settings_file = partial_path(self.out), _settings_path(self.out)
        self.settings = json.loads(json.dumps(settings))  # as read back from the file
        try:
            if not (resume and self._resumed()):
                self._start()
            self._file: BinaryIO = open(self.partial, "ab")  # noqa: SIM115 (closed by finish / __exit__)
        except OSError as e:
            raise OutDirError(f"cannot write {e.filename or self.partial}: {e.strerror or e}") from e

    def __enter__(self) -> PartialCSV:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def _start(self) -> None:
        if self.partial.is_file():
            note = "an interrupted run's rows; --resume continues one"
            print(f"replacing {self.partial} ({note})", file=sys.stderr)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.settings_file, self.settings)
        atomic_write_bytes(self.partial, encode(csv_text([header(self.top_k)])))

    def _resumed(self) -> bool:
        """Keep the rows of the partial file (False when there is none); OutDirError when they are not this
        run's."""
        if not self.partial.is_file():
            log.warning("no %s to resume: starting from the beginning", self.partial)
            return False
        self._check_settings()
        with open(self.partial, newline="", **ENCODING) as f:
            text = f.read()
        records, end = _complete_records(text, len(header(self.top_k)))
        if records[:1] != [header(self.top_k)]:
            raise self._refusal("does not start with this run's header")
        rows = records[1:]
        if len(rows) > len(self.images):
            raise self._refusal(f"has {len(rows)} rows for {len(self.images)} images")
        for i, (cells, image) in enumerate(zip(rows, self.images, strict=False)):
            if cells[0] != spreadsheet_safe(str(image)):
                raise self._refusal(f"row {i + 1} is for {cells[0]}, but image {i + 1} is now {image}")
        with open(self.partial, "r+b") as f:  # drop a row cut short by a kill
            f.truncate(len(encode(text[:end])))
        self.done = len(rows)
        pairs = zip(self.images, rows, strict=False)
        self.bad = [(str(image), cells[-1]) for image, cells in pairs if cells[-1]]
        print(f"resuming after the {self.done} rows in {self.partial}", file=sys.stderr)
        return True

    def _check_settings(self) -> None:
        try:
            saved = json.loads(self.settings_file.read_text())
        except (OSError, ValueError) as e:
            raise self._refusal(f"has no readable settings file {self.settings_file} ({e})") from e
        if saved != self.settings:
            saved = saved if isinstance(saved, dict) else {}
            differ = [k for k in self.settings if saved.get(k) != self.settings[k]]
            raise self._refusal(f"was written with another {', '.join(differ) or 'format'}")

    def _refusal(self, what: str) -> OutDirError:
        return OutDirError(
            f"{self.partial} {what}: run without --resume to start over, or choose another --out"
        )

    def append(self, rows: Sequence[dict]) -> None:
        """Write a batch of rows (in image order, after those written) and flush it to the file."""
        self._file.write(encode(csv_text(row_cells(r, self.top_k) for r in rows)))
        self._file.flush()
        self._count(rows)

    def finish(self, grading: bool = False) -> None:
        """Every image has its row: OUT becomes the complete CSV in one rename; the partial files go."""
        if self.done != len(self.images):
            raise RuntimeError(f"{self.partial} has {self.done} rows for {len(self.images)} images")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if grading:
            with open(self.partial, newline="", **ENCODING) as f:
                rows = _complete_records(f.read(), len(header(self.top_k)))[0][1:]
            pairs = ((str(image), cells[1]) for image, cells in zip(self.images, rows, strict=True))
            atomic_write_bytes(self.out, encode(grading_text(pairs)))
            self.partial.unlink()
        else:
            os.replace(self.partial, self.out)
            fsync_folder(self.out.parent)
        self.settings_file.unlink(missing_ok=True)


class StdoutCSV(_Counts):
    """The same CSV on standard output: rows as they are made ('grading' sorts them, so it waits for all)."""

    def __init__(self, stream: BinaryIO, top_k: int, grading: bool) -> None:
        super().__init__()
        self.stream, self.top_k, self.grading = stream, top_k, grading
        self.pairs: list[tuple[str, str]] = []
        if not grading:
            self._write(csv_text([header(top_k)]))

    def append(self, rows: Sequence[dict]) -> None:
        if self.grading:
            self.pairs += [(r["image"], r["top"][0][0] if r["top"] else "") for r in rows]
        else:
            self._write(csv_text(row_cells(r, self.top_k) for r in rows))
        self._count(rows)

    def finish(self) -> None:
        if self.grading:
            self._write(grading_text(self.pairs))

    def _write(self, text: str) -> None:
        self.stream.write(encode(text))
        self.stream.flush()


def _complete_records(text: str, width: int) -> tuple[list[list[str]], int]:
    """The records at the start of `text` that are whole, and where they end. A record counts only if it
    has `width` cells and writing it again gives the very characters read: a row cut short by a kill (or
    damaged otherwise) ends the list, and is predicted again."""
    records: list[list[str]] = []
    end = 0
    try:
        for cells in csv.reader(io.StringIO(text, newline=""), strict=True):
            line = _line(cells)
            if len(cells) != width or not text.startswith(line, end):
                break
            records.append(cells)
            end += len(line)
    except csv.Error:  # a quoted cell cut short
        pass
    return records, end


def _line(cells: Sequence[str]) -> str:
    """Cells as csv_text writes them, without escaping again (they were escaped when written)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()
