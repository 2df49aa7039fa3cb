"""Dataset layouts on disk, their splits, and the samples they yield.

Three layouts are understood (see `discover`): Kaggle "BIRDS 525 species" split folders, CUB-200-2011, and a
plain folder-per-class tree that is split here with a seeded, stratified split. Also here: prediction inputs
(`list_images`), seeded class-balanced subsets, and relabelling a split to a model's classes.
"""

from __future__ import annotations

import difflib
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .images import IMAGE_EXTENSIONS

__all__ = [
    "SPLITS",
    "DataError",
    "Dataset",
    "Sample",
    "discover",
    "list_images",
    "samples_for_model",
    "stratified_subset",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Folder names accepted for each split of the Kaggle layout (compared lower-case).
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_LAYOUT_HELP = (
    "Accepted layouts:\n"
    "  kaggle:  ROOT/train/<class>/*.jpg plus ROOT/valid/ (or val/, validation/) and/or ROOT/test/ alike\n"
    "  cub:     CUB-200-2011: ROOT/images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,\n"
    "           images/\n"
    "  folders: ROOT/<class>/*.jpg (split into train/valid/test here)"
)


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


def list_images(paths: Iterable[str | Path] | str | Path, skipped: list[Path] | None = None) -> list[Path]:
    """Prediction inputs: files kept as given (any extension: bad ones get an error row), folders walked for
    image files (IMAGE_EXTENSIONS, as datasets are read). Other files in a folder (a dataset's CSV, a
    README) are not images to predict: they are left out, and appended to ``skipped`` when it is given."""
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for file in _walk_files(path):
                if _is_image_name(file):
                    found.append(file)
                elif skipped is not None:
                    skipped.append(file)
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
        return _scan_cub_or_folders(root)
    if split_dirs:
        names = ", ".join(f"{p.name}/" for p in split_dirs.values())
        raise DataError(
            f"{root} has {names} but no train/ folder; add train/<class>/ folders.\n{_LAYOUT_HELP}"
        )
    scan = _scan_folders(root)
    if scan is not None:
        return scan
    raise DataError(
        f"{root}: no dataset layout recognised (no class folders holding images).\n{_LAYOUT_HELP}"
    )


def _scan_folders(root: Path) -> _Scan | None:
    """ROOT/<class>/*.jpg, or None when no class folder holds an image."""
    classes = {d.name: _image_files(d) for d in _subfolders(root)}
    if not any(classes.values()):
        return None
    empty = [root / name for name, files in classes.items() if not files]
    return _Scan(root, "folders", sorted(classes), {"all": classes}, empty)


def _scan_cub_or_folders(root: Path) -> _Scan:
    """CUB from its metadata; when that cannot be read but images/<species>/ is a plain class-folder tree
    (as public CUB subsets ship it), the error offers that tree instead of only stopping."""
    try:
        return _scan_cub(root)
    except DataError as e:
        if _scan_folders(root / "images") is None:
            raise
        raise DataError(
            f"{e}\n{root / 'images'} is a plain tree of species folders: to use it without the CUB metadata "
            f"(split 70/15/15 here), pass {root / 'images'} as the dataset"
        ) from e


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


_CUB_LINE = re.compile(r"\s*(\d+)\s*[,\s]\s*(\S.*?)\s*")  # '<id> <value>' or '<id>, <value>'


def _read_table(path: Path, what: str) -> dict[int, str]:
    """Parse CUB's '<id> <value>' lines (or '<id>, <value>', as subsets write them); ids may start at 0 or
    1, as long as the files agree; values keep inner spaces."""
    if not path.is_file():
        raise DataError(f"{path}: missing; a CUB-200-2011 folder needs {', '.join(_CUB_FILES)} and images/")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({e})") from e
    table: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _CUB_LINE.fullmatch(line)
        if match is None:
            raise DataError(
                f"{path}, line {number}: expected '<id> <{what}>' or '<id>, <{what}>', got {line!r}"
            )
        key, value = int(match[1]), match[2]
        if key in table:
            raise DataError(f"{path}, line {number}: id {key} appears twice")
        table[key] = value
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


def samples_for_model(dataset: Dataset, split: str, class_names: Sequence[str]) -> list[Sample]:
    """The split's samples relabelled to the model's class indices (by name); other classes are dropped."""
    samples = dataset.splits.get(split) or []
    if not samples:
        raise DataError(f"{dataset.root}: split {split!r} is empty or missing")
    index = {name: i for i, name in enumerate(class_names)}
    mapped = [
        Sample(s.path, index[dataset.class_names[s.label]])
        for s in samples
        if dataset.class_names[s.label] in index
    ]
    if not mapped:
        raise DataError(f"{dataset.root}: none of the {split} classes is one of the model's classes")
    return mapped
