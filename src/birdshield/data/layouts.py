"""Datasets on disk: layout discovery, robust image decoding, tensors, and dataset health checks.

Three layouts are understood (see `discover`): Kaggle "BIRDS 525 species" split folders, CUB-200-2011, and a
plain folder-per-class tree that is split here with a seeded, stratified split.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import math
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "SPLITS",
    "BadImageError",
    "DataError",
    "Dataset",
    "ImageDataset",
    "Sample",
    "check",
    "collate_skip_bad",
    "discover",
    "format_check",
    "list_images",
    "read_batches",
    "read_rgb",
    "stratified_subset",
    "to_tensor",
]

log = logging.getLogger("birdshield")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
MAX_PIXELS: int = 100_000_000
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Folder names accepted for each split of the Kaggle layout (compared lower-case).
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_MAX_NEAR_PAIRS = 10_000  # flat images all hash alike; cap the report instead of listing O(n^2) pairs
_LAYOUT_HELP = (
    "Accepted layouts:\n"
    "  kaggle:  ROOT/train/<class>/*.jpg plus ROOT/valid/ (or val/, validation/) and/or ROOT/test/ alike\n"
    "  cub:     CUB-200-2011: ROOT/images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,\n"
    "           images/\n"
    "  folders: ROOT/<class>/*.jpg (split into train/valid/test here)"
)


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


# --------------------------------------------------------------------------------------------------- images


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file fully into an RGB image, or raise BadImageError saying why it cannot be used.

    The size limit is checked from the header before any pixel is decoded. Pillow's own, process-global
    decompression-bomb check still runs first inside ``Image.open``; it is reported as "image too large" too.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImageError(path, _os_reason(e)) from e
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's warning, which would otherwise escape to the caller.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(path, data, max_pixels)


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read file ({e.strerror or e})"


def _decode(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes read from `path`. Warning filters are up to the caller (check() decodes in threads)."""
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    img = _open_image(path, data, max_pixels)
    try:
        img.load()  # decode now so truncated or corrupt data fails here, not later in a DataLoader worker
    except Image.DecompressionBombError as e:  # some plugins check sizes again while loading
        raise BadImageError(path, f"image too large: {e}") from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({e})") from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a broken EXIF block must not make good pixels unusable
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
    try:
        return _as_rgb(img)
    except (ValueError, OSError) as e:
        raise BadImageError(path, f"unsupported colour mode {img.mode} ({e})") from e


def _open_image(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        raise BadImageError(path, "not an image file (unknown or unsupported format)") from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({e})") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise BadImageError(path, f"image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise BadImageError(
            path, f"image too large: {width} x {height} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    return img


def _as_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency goes onto white, high bit depths are scaled, not clipped."""
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        img = _to_8bit(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", img.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bit, by nominal range (else the actual range)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode in _SIXTEEN_BIT:
        a /= 257.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a *= 255.0  # float images are usually 0..1
        elif lo >= 0.0 and hi <= 65535.0 and hi > 255.0:
            a /= 257.0  # 16-bit data that Pillow opened as 32-bit "I"
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) * (255.0 / (hi - lo))  # no nominal range: stretch what is there
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: shorter side resized to `size` (bilinear, antialiased), centred."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if img.mode != "RGB":
        img = _as_rgb(img)
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        # Pillow's bilinear filter widens its support when shrinking, i.e. it is antialiased.
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


# ------------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Dataset:
    """A dataset found on disk: sorted class names and each split's samples (a missing split is empty)."""

    root: Path
    layout: str
    class_names: list[str]
    splits: dict[str, list[Sample]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class _Scan:
    """What is on disk before any validation or splitting: split -> class -> sorted image paths.

    Kaggle scans use the real split names, CUB scans "train"/"test", folder scans a single "all" pseudo split.
    """

    root: Path
    layout: str
    classes: list[str]
    files: dict[str, dict[str, list[Path]]]
    empty: list[Path] = field(default_factory=list)  # class folders without images (CUB: classes.txt lines)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(folder: Path) -> list[Path]:
    """Every non-hidden regular file below `folder`, skipping hidden folders, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            path = Path(dirpath, name)
            if not _is_hidden(name) and path.is_file():
                found.append(path)
    return sorted(found)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _walk_files(folder) if _is_image_name(p)]


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def list_images(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """Prediction inputs: files kept as given (any extension: bad ones get an error row), folders walked."""
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(_walk_files(path))
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return found


def _root_path(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise DataError(f"{path}: not a folder. Point to the dataset folder.\n{_LAYOUT_HELP}")
    return path


def _scan(root: Path) -> _Scan:
    split_dirs = _split_dirs(root)
    if "train" in split_dirs:
        return _scan_kaggle(root, split_dirs)
    if any((root / name).exists() for name in _CUB_FILES):
        return _scan_cub(root)
    if split_dirs:
        names = ", ".join(f"{p.name}/" for p in split_dirs.values())
        raise DataError(
            f"{root} has {names} but no train/ folder; add train/<class>/ folders.\n{_LAYOUT_HELP}"
        )
    classes = {d.name: _image_files(d) for d in _subfolders(root)}
    if any(classes.values()):
        empty = [root / name for name, files in classes.items() if not files]
        return _Scan(root, "folders", sorted(classes), {"all": classes}, empty)
    raise DataError(
        f"{root}: no dataset layout recognised (no class folders holding images).\n{_LAYOUT_HELP}"
    )


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in _subfolders(root):
        split = _SPLIT_ALIASES.get(folder.name.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(
                f"{root}: both {found[split].name}/ and {folder.name}/ look like the {split} split; "
                "keep only one of them"
            )
        found[split] = folder
    return found


def _scan_kaggle(root: Path, split_dirs: dict[str, Path]) -> _Scan:
    files: dict[str, dict[str, list[Path]]] = {}
    empty: list[Path] = []
    for split, folder in split_dirs.items():
        files[split] = {d.name: _image_files(d) for d in _subfolders(folder)}
        empty += [folder / name for name, paths in files[split].items() if not paths]
    if not files["train"]:
        raise DataError(f"{split_dirs['train']}: holds no class folders; expected train/<class>/*.jpg")
    return _Scan(root, "kaggle", sorted(files["train"]), files, sorted(empty))


def _read_table(path: Path, what: str) -> dict[int, str]:
    """Parse CUB's '<id> <value>' lines; values keep inner spaces."""
    if not path.is_file():
        raise DataError(f"{path}: missing; a CUB-200-2011 folder needs {', '.join(_CUB_FILES)} and images/")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({e})") from e
    table: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}, line {number}: expected '<id> <{what}>', got {line!r}")
        if int(parts[0]) in table:
            raise DataError(f"{path}, line {number}: id {parts[0]} appears twice")
        table[int(parts[0])] = parts[1].rstrip()
    return table


def _scan_cub(root: Path) -> _Scan:
    images = _read_table(root / "images.txt", "image path")
    labels = _read_table(root / "image_class_labels.txt", "class id")
    is_train = _read_table(root / "train_test_split.txt", "is_training_image")
    classes = _read_table(root / "classes.txt", "class name")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        _same_ids(root / name, set(table), set(images))
    _check_values(
        root / "image_class_labels.txt", labels, {str(i) for i in classes}, "class ids from classes.txt"
    )
    _check_values(root / "train_test_split.txt", is_train, {"0", "1"}, "0 or 1")
    if len(set(classes.values())) != len(classes):
        raise DataError(f"{root / 'classes.txt'}: class names must be unique")
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'}: missing; CUB image paths in images.txt are relative to it")
    files: dict[str, dict[str, list[Path]]] = {"train": defaultdict(list), "test": defaultdict(list)}
    for image_id, rel in images.items():
        split = "train" if is_train[image_id] == "1" else "test"
        files[split][classes[int(labels[image_id])]].append(root / "images" / rel)
    files = {
        split: {c: sorted(paths) for c, paths in per_class.items()} for split, per_class in files.items()
    }
    used = {c for per_class in files.values() for c in per_class}
    empty = [Path(c) for c in sorted(classes.values()) if c not in used]
    return _Scan(root, "cub", sorted(classes.values()), files, empty)


def _same_ids(path: Path, ids: set[int], expected: set[int]) -> None:
    if ids == expected:
        return
    missing, extra = sorted(expected - ids)[:5], sorted(ids - expected)[:5]
    raise DataError(
        f"{path}: image ids do not match images.txt (missing here: {missing or 'none'}, "
        f"unknown here: {extra or 'none'}); the CUB files must come from the same release"
    )


def _check_values(path: Path, table: dict[int, str], allowed: set[str], what: str) -> None:
    bad = [f"{key} {value}" for key, value in table.items() if value not in allowed]
    if bad:
        raise DataError(f"{path}: values must be {what}; bad lines: {bad[:5]}")


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise ValueError(
            f"valid_fraction ({valid_fraction}) and test_fraction ({test_fraction}) must be >= 0, sum < 1"
        )


def _holdout_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Hold-out sizes of one class: >= 1 per positive fraction once >= 1 image is also left to train on."""
    positive = [f > 0 for f in fractions]
    if n < 1 + sum(positive):
        return [0] * len(fractions)
    sizes = [max(1, math.floor(n * f + 0.5)) if p else 0 for f, p in zip(fractions, positive, strict=True)]
    while sum(sizes) >= n:  # rounding up can eat the whole class; shrink the largest hold-out
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def _split_class(
    paths: Sequence[Path], key: str, seed: int, fractions: Sequence[float]
) -> tuple[list[Path], ...]:
    """Seeded shuffle of one class, cut into train + one part per fraction; seeding per class keeps a class's
    split unchanged when other classes are added or removed."""
    order = sorted(paths)
    random.Random(f"{seed}:{key}").shuffle(order)
    parts, start = [], 0
    for size in _holdout_sizes(len(order), fractions):
        parts.append(sorted(order[start : start + size]))
        start += size
    return (sorted(order[start:]), *parts)


def _assign(
    scan: _Scan, seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, dict[str, list[Path]]]:
    """Final split -> class -> paths. Kaggle keeps its folders (absent splits stay absent)."""
    if scan.layout == "kaggle":
        return scan.files
    out: dict[str, dict[str, list[Path]]] = {split: {} for split in SPLITS}
    if scan.layout == "cub":
        out["test"] = dict(scan.files["test"])
        for name, paths in scan.files["train"].items():
            out["train"][name], out["valid"][name] = _split_class(paths, name, seed, [valid_fraction])
        return out
    for name, paths in scan.files["all"].items():
        parts = _split_class(paths, name, seed, [valid_fraction, test_fraction])
        for split, part in zip(SPLITS, parts, strict=True):
            out[split][name] = part
    return out


def _extra_classes(scan: _Scan) -> dict[str, list[str]]:
    known = set(scan.classes)
    return {split: sorted(set(scan.files.get(split, {})) - known) for split in SPLITS[1:]}


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.8)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)


def _validate(scan: _Scan) -> None:
    """discover()'s strictness: problems that check() only reports are errors here."""
    if scan.empty:
        what = "class(es) in classes.txt" if scan.layout == "cub" else "class folder(s)"
        shown = "\n  ".join(str(p) for p in scan.empty[:20])
        raise DataError(f"{len(scan.empty)} {what} without images; remove them or add images:\n  {shown}")
    for split, extra in _extra_classes(scan).items():
        if extra:
            names = ", ".join(_did_you_mean(name, scan.classes) for name in extra[:20])
            raise DataError(
                f"{scan.root}: {len(extra)} class(es) in the {split} split have no train/ folder: {names}. "
                "Rename them to match train/ or remove them."
            )
    if scan.layout == "cub":
        missing = [
            p for per_class in scan.files.values() for ps in per_class.values() for p in ps if not p.is_file()
        ]
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in images.txt are missing, e.g. {missing[0]}")


def discover(
    root: str | Path, *, seed: int = 0, valid_fraction: float = 0.15, test_fraction: float = 0.15
) -> Dataset:
    """Find the dataset layout under `root` and return its classes and splits.

    Fractions apply per class to the "folders" layout and (`valid_fraction` only) to carving valid out of
    CUB's training images; Kaggle folders are used as they are.
    """
    _check_fractions(valid_fraction, test_fraction)
    scan = _scan(_root_path(root))
    _validate(scan)
    files = _assign(scan, seed, valid_fraction, test_fraction)
    index = {name: i for i, name in enumerate(scan.classes)}
    splits = {
        split: sorted(
            (Sample(p, index[name]) for name, paths in files.get(split, {}).items() for p in paths),
            key=lambda s: s.path,
        )
        for split in SPLITS
    }
    return Dataset(scan.root, scan.layout, list(scan.classes), splits)


def stratified_subset(samples: Sequence[Sample], n: int | None, seed: int = 0) -> list[Sample]:
    """A seeded subset of n samples with every class as equally represented as its images allow."""
    if n is None or n >= len(samples):
        return list(samples)
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
    rng.shuffle(queues)  # which classes get the one extra image when n is not a multiple
    longest = max(map(len, queues))
    order = [q[i] for i in range(longest) for q in queues if i < len(q)]
    return sorted(order[:n], key=lambda s: s.path)


def read_batches(
    paths: Sequence[Path], size: int, batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[Path, str]]]]:
    """Decode `paths` a batch at a time: (indices of the readable ones, their tensors or None, [(bad path,
    reason)]). Unreadable files are reported, never raised, so a long job goes on."""
    for start in range(0, len(paths), batch_size):
        good, tensors, bad = [], [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                tensors.append(to_tensor(read_rgb(paths[i]), size))
                good.append(i)
            except BadImageError as e:
                bad.append((paths[i], e.reason))
        yield good, (torch.stack(tensors) if tensors else None), bad


# --------------------------------------------------------------------------------------------- torch access


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
            img = read_rgb(sample.path)
        except BadImageError as e:
            if self.strict:
                raise
            log.warning("skipping unreadable image %s", e)
            return None
        tensor = self.transform(img) if self.transform is not None else to_tensor(img, self.size)
        return tensor, sample.label


def collate_skip_bad(
    batch: Sequence[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Collate for ImageDataset: drops unreadable (None) items; None when the whole batch was unreadable."""
    items = [item for item in batch if item is not None]
    if not items:
        return None
    images, labels = zip(*items, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


# -------------------------------------------------------------------------------------------------- checking


@dataclass
class _Inspected:
    md5: str | None = None
    dhash: int | None = None
    reason: str | None = None  # why the image is unreadable


def _dhash(img: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9x8 thumbnail brighter than its right neighbour."""
    thumb = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = np.packbits(thumb[:, :-1] > thumb[:, 1:])
    return int.from_bytes(bits.tobytes(), "big")


def _inspect(path: Path) -> _Inspected:
    try:
        data = path.read_bytes()
    except OSError as e:
        return _Inspected(reason=_os_reason(e))
    try:
        img = _decode(path, data, MAX_PIXELS)
    except BadImageError as e:
        return _Inspected(reason=e.reason)
    return _Inspected(hashlib.md5(data, usedforsecurity=False).hexdigest(), _dhash(img))


def _inspect_all(paths: Sequence[Path]) -> list[_Inspected]:
    """Decode every image once, in threads (Pillow and hashlib release the GIL); progress bar on a TTY."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    # Warning filters are process-global: set them once here rather than racily inside each thread.
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, min(8, cpus))) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = pool.map(_inspect, paths)
        return list(tqdm(results, total=len(paths), desc="checking images", unit="img", disable=None))


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)


def _near_pairs(hashes: np.ndarray, groups: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with Hamming distance <= threshold between items of different groups, in blocks."""
    pairs: list[tuple[int, int, int]] = []
    labels = np.unique(groups)
    for ga_pos, ga in enumerate(labels):
        a_idx = np.flatnonzero(groups == ga)
        b_idx = np.flatnonzero(np.isin(groups, labels[ga_pos + 1 :]))
        if not len(a_idx) or not len(b_idx):
            continue
        block = max(1, (1 << 22) // len(b_idx))  # ~32 MB of uint64 per block
        for start in range(0, len(a_idx), block):
            rows = a_idx[start : start + block]
            dist = _popcount(hashes[rows, None] ^ hashes[None, b_idx])
            ii, jj = np.nonzero(dist <= threshold)
            pairs += zip(rows[ii].tolist(), b_idx[jj].tolist(), dist[ii, jj].tolist(), strict=True)
    return pairs


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _class_report(scan: _Scan, files: dict[str, dict[str, list[Path]]]) -> dict[str, Any]:
    present = [s for s in SPLITS if s in files]
    counts = {s: {c: len(files[s].get(c, [])) for c in sorted({*scan.classes, *files[s]})} for s in present}
    counts.update({s: {} for s in SPLITS if s not in files})
    missing = {s: [c for c in scan.classes if not counts[s].get(c)] for s in present if s != "train"}
    empty = [_rel(p, scan.root) for p in scan.empty]
    return {
        "classes": list(scan.classes),
        "counts": counts,
        "totals": {s: sum(counts[s].values()) for s in SPLITS},
        "empty_classes": empty,
        "missing": {s: missing.get(s, []) for s in SPLITS[1:]},
        "extra": _extra_classes(scan),
    }


def _duplicate_report(
    items: list[tuple[str, Path]], found: list[_Inspected], root: Path, threshold: int
) -> dict[str, Any]:
    ok = [i for i, f in enumerate(found) if f.reason is None]
    by_md5: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_md5[str(found[i].md5)].append(i)
    exact = [
        {"paths": [_rel(items[i][1], root) for i in group], "splits": [items[i][0] for i in group]}
        for group in by_md5.values()
        if len({items[i][0] for i in group}) > 1
    ]
    hashes = np.array([found[i].dhash for i in ok], dtype=np.uint64)
    groups = np.array([SPLITS.index(items[i][0]) for i in ok], dtype=np.int64)
    near = []
    for a, b, dist in sorted(_near_pairs(hashes, groups, threshold), key=lambda t: (t[2], t[0], t[1])):
        ia, ib = ok[a], ok[b]
        if found[ia].md5 != found[ib].md5:
            (split_a, path_a), (split_b, path_b) = items[ia], items[ib]
            near.append(
                {
                    "a": _rel(path_a, root),
                    "b": _rel(path_b, root),
                    "distance": dist,
                    "splits": [split_a, split_b],
                }
            )
    if len(near) > _MAX_NEAR_PAIRS:
        log.warning("%d near-duplicate pairs found; reporting the closest %d", len(near), _MAX_NEAR_PAIRS)
        near = near[:_MAX_NEAR_PAIRS]
    return {"exact_duplicates": exact, "near_duplicates": near}


def check(root: str | Path, *, near_duplicate_threshold: int = 4, seed: int = 0) -> dict[str, Any]:
    """Health report of a dataset (JSON-serialisable): counts, unreadable images, class mismatches, leaks.

    Dataset problems are reported, not raised; only an unrecognisable layout raises DataError. Splits of the
    "folders" and "cub" layouts are the ones `discover` makes with the same seed and default fractions.
    """
    if not 0 <= near_duplicate_threshold <= 64:
        raise ValueError(f"near_duplicate_threshold must be 0..64 bits, got {near_duplicate_threshold}")
    scan = _scan(_root_path(root))
    files = _assign(scan, seed, 0.15, 0.15)
    items = [(s, p) for s in SPLITS for _, paths in sorted(files.get(s, {}).items()) for p in paths]
    found = _inspect_all([p for _, p in items])
    unreadable = [
        {"path": _rel(p, scan.root), "reason": f.reason}
        for (_, p), f in zip(items, found, strict=True)
        if f.reason
    ]
    report: dict[str, Any] = {"root": str(scan.root), "layout": scan.layout}
    report |= _class_report(scan, files)
    report["unreadable"] = unreadable
    report |= _duplicate_report(items, found, scan.root, near_duplicate_threshold)
    report["problems"] = (
        len(unreadable)
        + len(report["empty_classes"])
        + sum(map(len, report["missing"].values()))
        + sum(map(len, report["extra"].values()))
        + len(report["exact_duplicates"])
        + len(report["near_duplicates"])
    )
    return report


def _count_table(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    splits = [s for s in SPLITS if counts.get(s)]
    names = sorted({c for s in splits for c in counts[s]})
    width = max([len("class"), *map(len, names)])
    lines = ["class".ljust(width) + "".join(f"{s:>8}" for s in splits)]
    lines += [name.ljust(width) + "".join(f"{counts[s].get(name, 0):>8}" for s in splits) for name in names]
    return lines


def _problem_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def section(title: str, entries: list[str]) -> None:
        if entries:
            lines.append(f"{title} ({len(entries)}):")
            lines.extend(f"  {entry}" for entry in entries)

    section("unreadable images", [f"{u['path']}: {u['reason']}" for u in report["unreadable"]])
    section("classes without images", report["empty_classes"])
    for split, names in report["missing"].items():
        section(f"classes with no {split} images", names)
    for split, names in report["extra"].items():
        section(f"classes in {split} but not in train", names)
    exact = [zip(d["paths"], d["splits"], strict=True) for d in report["exact_duplicates"]]
    section(
        "identical files in different splits",
        [" == ".join(f"{p} ({s})" for p, s in group) for group in exact],
    )
    section(
        "near-duplicate images in different splits",
        [f"{d['a']} ~ {d['b']} (distance {d['distance']})" for d in report["near_duplicates"]],
    )
    return lines


def format_check(report: dict[str, Any]) -> str:
    """Human-readable rendering of a `check` report."""
    totals = ", ".join(f"{s} {report['totals'].get(s, 0)}" for s in SPLITS)
    lines = [
        f"dataset: {report['root']} (layout: {report['layout']}, {len(report['classes'])} classes)",
        f"images: {totals}",
        "",
        *_count_table(report),
        "",
    ]
    problems = _problem_lines(report)
    if problems:
        lines += [f"{report['problems']} problem(s) found:", *problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
