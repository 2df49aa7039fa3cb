"""Decoded images on disk: each image of a split decoded once, resized and centre-cropped to the model's
input size, kept as uint8 in a memory map. Later epochs read pixels instead of decoding files, which is what
keeps a GPU busy: decoding JPEGs on a few CPU cores, not the model, limits training there.

A cache is keyed by the images (path, size, modification time, label) and the input size; it fills chunk by
chunk with a decoding thread pool, says in progress.json how many rows are final (a killed run resumes at
the chunk in flight), and remembers unreadable images as such. `DecodedImages` is a drop-in for
`ImageDataset`: items are (uint8 image, label), or None for an unreadable image; `as_float` turns a batch
of them into the [0, 1] floats every model takes, bit for bit what decoding the files gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ..runtime import atomic_write_json, locked, progress
from .images import BadImageError, load_pixels
from .layouts import Sample

log = logging.getLogger("birdshield")
FORMAT = 1
CHUNK = 64  # images decoded between two progress commits


def as_float(x: torch.Tensor) -> torch.Tensor:
    """A batch of uint8 pixels as [0, 1] floats (float batches pass through): `to_tensor`'s numbers."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def cache_key(samples: Sequence[Sample], size: int) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "size": size}).encode())
    for s in samples:
        st = s.path.stat() if s.path.exists() else None
        line = f"{s.path}\0{st and st.st_size}\0{st and st.st_mtime_ns}\0{s.label}\n"
        h.update(line.encode(errors="surrogateescape"))  # a file name that is not UTF-8: its bytes
    return h.hexdigest()[:24]


class DecodedImages(TorchDataset):
    """The samples' pixels at `size`, decoded into `folder` (made or resumed on construction)."""

    def __init__(
        self, samples: Sequence[Sample], size: int, folder: Path, workers: int = 4, strict: bool = False
    ) -> None:
        self.samples, self.size = list(samples), size
        self.folder = Path(folder) / cache_key(self.samples, size)
        self._pixels: np.ndarray | None = None  # opened lazily in each process (memmaps do not pickle)
        with locked(self.folder):
            self.ok = _fill(self.folder, self.samples, size, workers, strict)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        if not self.ok[i]:
            return None
        if self._pixels is None:
            self._pixels = _pixels(self.folder, len(self.samples), self.size, "r")
        return torch.from_numpy(np.array(self._pixels[i])).permute(2, 0, 1), self.samples[i].label

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}


def _pixels(folder: Path, n: int, size: int, mode: str) -> np.memmap:
    return np.memmap(folder / "pixels.u8", np.uint8, mode, shape=(n, size, size, 3))


def _fill(folder: Path, samples: Sequence[Sample], size: int, workers: int, strict: bool) -> np.ndarray:
    """Decode the rows not done yet; returns which images were readable."""
    from concurrent.futures import ThreadPoolExecutor

    n, state_path = len(samples), folder / "progress.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    expected = n * size * size * 3
    pixels_file = folder / "pixels.u8"
    if state.get("format") != FORMAT or not pixels_file.is_file() or pixels_file.stat().st_size != expected:
        state = {"format": FORMAT, "done": 0}
        _pixels(folder, n, size, "w+").flush()
        np.memmap(folder / "ok.u8", np.uint8, "w+", shape=(n,)).flush()
    ok = np.memmap(folder / "ok.u8", np.uint8, "r+", shape=(n,))
    if state["done"] < n:
        pixels = _pixels(folder, n, size, "r+")
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="birdshield-decode") as pool:
            starts = range(state["done"], n, CHUNK)
            for start in progress(starts, desc="decode once", unit="chunk"):
                rows = range(start, min(start + CHUNK, n))
                for i, pix in zip(
                    rows, pool.map(lambda i: _decode(samples[i], size, strict), rows), strict=True
                ):
                    ok[i] = pix is not None
                    if pix is not None:
                        pixels[i] = pix.permute(1, 2, 0).numpy()
                pixels.flush()  # rows first, then the progress that says they are final
                ok.flush()
                state["done"] = rows.stop
                atomic_write_json(state_path, state)
    return np.array(ok, dtype=bool)


def _decode(sample: Sample, size: int, strict: bool) -> torch.Tensor | None:
    try:
        return load_pixels(sample.path, size)
    except BadImageError as e:  # as ImageDataset does: named and skipped, unless strict
        if strict:
            raise
        log.warning("skipping unreadable image %s", e)
        return None
