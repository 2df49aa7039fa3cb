"""Backbone features for the linear probe, cached on disk: float16, memory-mapped, resumable, shared by runs.

A cache is keyed by what determines its numbers: the architecture, the trunk's weights, the image size and
the images themselves (path, size, modification time, label). Each view (the plain image, its mirror) is
one (n, dim) float16 file filled chunk by chunk; progress.json, written atomically after each chunk, says
how many rows are final, so a killed run resumes at the chunk in flight and a later run with the same key
reads the features back without a forward pass. Memory stays bounded by a chunk: rows go straight to the
memory map, which the probe then reads batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import data
from ..models import Classifier
from ..runtime import atomic_write_json, locked, progress
from .batches import autocast, to_device
from .config import TrainConfig

log = logging.getLogger(__name__)
FORMAT = 1
CACHE_ENV = "BIRDSHIELD_CACHE"  # where caches live (default ~/.cache/birdshield)


def cache_root(setting: str = "", kind: str = "features") -> Path | None:
    """The folder of `kind` caches ("features" or "decoded"): `setting` (train's --feature-cache) if given
    for features, "none" for none; else $BIRDSHIELD_CACHE/KIND (default ~/.cache/birdshield/KIND)."""
    if setting == "none":
        return None
    if setting and kind == "features":
        return Path(setting)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "birdshield") / kind


def _trunk_digest(model: Classifier) -> str:
    head = {id(p) for p in model.head.parameters()}
    h = hashlib.sha256()
    for name, tensor in model.backbone.state_dict(keep_vars=True).items():
        if id(tensor) not in head:
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(model: Classifier, samples: Sequence[data.Sample]) -> str:
    """Identifies the features of `samples` under `model`'s trunk (its classifier head plays no part)."""
    h = hashlib.sha256()
    head = {"format": FORMAT, "arch": model.meta.get("arch"), "size": model.image_size}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(_trunk_digest(model).encode())
    for s in samples:
        st = s.path.stat() if s.path.exists() else None
        line = f"{s.path}\0{st and st.st_size}\0{st and st.st_mtime_ns}\0{s.label}\n"
        h.update(line.encode(errors="surrogateescape"))  # a file name that is not UTF-8: its bytes
    return h.hexdigest()[:24]


@dataclass
class CachedFeatures:
    """Features of one split: `views[name][i]` for sample i, usable where `ok[i]` (a readable image)."""

    views: dict[str, np.ndarray]  # (n, dim) float16, memory-mapped or in memory
    ok: np.ndarray  # (n,) bool
    labels: np.ndarray  # (n,) int64

    @property
    def usable(self) -> np.ndarray:
        return np.flatnonzero(self.ok)

    def batch(self, view: str, rows: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
        """Rows (sorted, for the memory map's sake) as float32 features and their labels on `device`."""
        rows = np.sort(rows)
        x = torch.from_numpy(np.ascontiguousarray(self.views[view][rows])).float().to(device)
        return x, torch.from_numpy(self.labels[rows]).to(device)


class _Indexed(Dataset):
    """(row, item) so the collate knows which rows a batch's readable images fill."""

    def __init__(self, ds: data.ImageDataset, rows: range) -> None:
        self.ds, self.rows = ds, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        return self.rows[i], self.ds[self.rows[i]]


Item = tuple[int, tuple[Tensor, int] | None]


def _collate(batch: list[Item]) -> tuple[list[int], list[int], Tensor | None]:
    good = [(row, item[0]) for row, item in batch if item is not None]
    bad = [row for row, item in batch if item is None]
    return [row for row, _ in good], bad, data.as_float(torch.stack([t for _, t in good])) if good else None


class _Features(nn.Module):
    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def _onnx_features(model: Classifier) -> Callable[[Tensor], Tensor]:
    """onnxruntime's forward of the pooled features: about 2x torch eager's on a CPU (see export.py)."""
    from ..export import graph_bytes, session, static_padded

    graph = _Features(static_padded(model, model.image_size))
    run = session(graph_bytes(graph, model.image_size, "features"), "cpu")
    return lambda x: torch.from_numpy(run.run(["features"], {"images": x.contiguous().numpy()})[0])


def feature_fn(model: Classifier, device: torch.device, cfg: TrainConfig) -> Callable[[Tensor], Tensor]:
    """x on the CPU -> float32 features on the CPU, by the faster runtime for `device`."""
    model.eval()
    if device.type == "cpu":
        try:
            return _onnx_features(model)
        except Exception as e:  # an architecture the exporter cannot take: torch is only slower
            log.warning("features in torch (ONNX export failed: %s: %s)", type(e).__name__, e)

    @torch.inference_mode()
    def torch_features(x: Tensor) -> Tensor:
        with autocast(device, cfg):
            return model.forward_features(to_device(x, device, cfg.channels_last)).float().cpu()

    return torch_features


VIEW_FNS = {"plain": lambda x: x, "flip": lambda x: x.flip(-1)}  # the views a cache can hold


def _open(folder: Path, n: int, dim: int, views: Sequence[str]) -> tuple[dict, dict, np.memmap]:
    """The cache's progress and memory maps, created empty where missing or from another shape."""
    state_path = folder / "progress.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("format") != FORMAT or state.get("n") != n or state.get("dim") != dim:
        state = {"format": FORMAT, "n": n, "dim": dim, "done": {}}
    maps = {}
    for view in views:
        path = folder / f"{view}.f16"
        fresh = view not in state["done"] or not path.is_file() or path.stat().st_size != n * dim * 2
        if fresh:
            state["done"][view] = 0
        maps[view] = np.memmap(path, np.float16, "w+" if fresh else "r+", shape=(n, dim))
    ok_path = folder / "ok.u8"
    reuse = ok_path.is_file() and ok_path.stat().st_size == n
    ok = np.memmap(ok_path, np.uint8, "r+" if reuse else "w+", shape=(n,))
    atomic_write_json(state_path, state)
    return state, maps, ok


def _fill(
    folder: Path | None,
    ds: data.ImageDataset,
    views: Sequence[str],
    forward: Callable[[], Callable[[Tensor], Tensor]],
    dim: int,
    cfg: TrainConfig,
    desc: str,
) -> CachedFeatures:
    n = len(ds)
    labels = np.array([s.label for s in ds.samples], dtype=np.int64)
    if folder is None:
        state: dict = {"done": dict.fromkeys(views, 0)}
        maps = {v: np.zeros((n, dim), np.float16) for v in views}
        ok = np.zeros(n, np.uint8)
    else:
        state, maps, ok = _open(folder, n, dim, views)
    todo = [v for v in views if state["done"][v] < n]
    if todo:
        start = min(state["done"][v] for v in todo)
        fn = forward()
        loader = DataLoader(
            _Indexed(ds, range(start, n)), batch_size=cfg.batch_size, num_workers=cfg.workers,
            collate_fn=_collate, pin_memory=False,
        )  # fmt: skip
        for rows, bad, x in progress(loader, desc=desc):
            ok[bad] = 0
            if x is not None:
                ok[rows] = 1
                for view in todo:
                    maps[view][rows] = fn(VIEW_FNS[view](x)).numpy().astype(np.float16)
            if folder is not None:
                _commit(folder, state, maps, ok, todo, max(rows + bad) + 1)
    return CachedFeatures(maps, ok.astype(bool), labels)


def _commit(folder: Path, state: dict, maps: dict[str, np.memmap], ok: np.memmap, views, done: int) -> None:
    """Rows before `done` are on disk: flush the maps first, then say so (a kill between loses nothing)."""
    for view in views:
        maps[view].flush()
        state["done"][view] = done
    ok.flush()
    atomic_write_json(folder / "progress.json", state)


def split_features(
    model: Classifier,
    ds: data.ImageDataset,
    views: Sequence[str],
    cfg: TrainConfig,
    device: torch.device,
    cache: Path | None,
    desc: str,
    forward: Callable[[], Callable[[Tensor], Tensor]],
) -> tuple[CachedFeatures, str | None]:
    """Features of every image of `ds` in `views`, from the cache under `cache` where there (None: in
    memory); returns them and the cache folder's key (None without a cache)."""
    dim = model.backbone.num_features
    if cache is None:
        return _fill(None, ds, views, forward, dim, cfg, desc), None
    key = cache_key(model, ds.samples)
    with locked(cache / key):
        return _fill(cache / key, ds, views, forward, dim, cfg, desc), key
