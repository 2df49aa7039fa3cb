"""From samples to batches of tensors, skipping unreadable images rather than stopping a long job.

ImageDataset is the torch Dataset that training and evaluation loaders read (None for an unreadable image,
dropped by collate_skip_bad); read_batches streams a list of files as tensor chunks without a DataLoader and
reports the bad files beside each chunk.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from .images import BadImageError, load_tensor, read_rgb
from .layouts import Sample

__all__ = ["ImageDataset", "collate_skip_bad", "read_batches"]

log = logging.getLogger("birdshield")


Chunk = tuple[list[int], torch.Tensor | None, list[tuple[Path, str]]]


def read_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int = 1) -> Iterator[Chunk]:
    """Decode `paths` a batch at a time: (indices of the readable ones, their tensors or None, [(bad path,
    reason)]). Unreadable files are reported, never raised, so a long job goes on.

    `workers` threads decode the next chunks while the caller works on this one (Pillow and torch release
    the GIL while they decode and convert), so a model is not kept waiting for its input; 0 decodes each
    chunk when it is asked for. The chunks and their order are the same either way.
    """
    starts = range(0, len(paths), batch_size)
    if workers < 1:
        yield from (_read_chunk(paths, start, batch_size, size) for start in starts)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="birdshield-decode")
    try:
        pending: deque[Future[Chunk]] = deque()
        for start in starts:
            pending.append(pool.submit(_read_chunk, paths, start, batch_size, size))
            if len(pending) > workers:  # at most `workers` chunks decoded ahead: memory stays bounded
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_chunk(paths: Sequence[Path], start: int, batch_size: int, size: int) -> Chunk:
    good, tensors, bad = [], [], []
    for i in range(start, min(start + batch_size, len(paths))):
        try:
            tensors.append(load_tensor(paths[i], size))
            good.append(i)
        except BadImageError as e:
            bad.append((paths[i], e.reason))
    return good, (torch.stack(tensors) if tensors else None), bad


class ImageDataset(TorchDataset):
    """(image tensor, label) per sample; an unreadable image gives None (see collate_skip_bad) unless strict.

    `transform`, when given, replaces the default ``to_tensor(img, size)`` (e.g. training augmentation).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        strict: bool = False,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.size = size
        self.strict = strict
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        sample = self.samples[i]
        try:
            tensor = self._tensor(sample.path)
        except BadImageError as e:
            if self.strict:
                raise
            log.warning("skipping unreadable image %s", e)
            return None
        return tensor, sample.label

    def _tensor(self, path: Path) -> torch.Tensor:
        if self.transform is None:
            return load_tensor(path, self.size)
        img = read_rgb(path)
        try:
            return self.transform(img)
        except Exception as e:  # one odd file must not stop training
            raise BadImageError(path, f"cannot transform ({type(e).__name__}: {e})") from e


def collate_skip_bad(
    batch: Sequence[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Collate for ImageDataset: drops unreadable (None) items; None when the whole batch was unreadable."""
    items = [item for item in batch if item is not None]
    if not items:
        return None
    images, labels = zip(*items, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
