"""ONNX export of a birdshield classifier, and `OnnxClassifier`: the exported graph behind the same call.

The graph takes what the torch model takes, float32 RGB in [0, 1], NCHW at the model's image size, and
returns logits; mean/std normalisation is inside it. What a caller needs to feed it (class names, image
size, how a photo becomes that tensor) travels in the file's metadata_props as JSON strings.

Exporter: torch's TorchScript-based exporter (`dynamo=False`). It needs no extra package and is several
times faster than the torch.export-based one for these models, which matters because `runtime="onnx"`
exports on first use; both give the same logits. Before export, timm's dynamic TF "SAME"
convolutions (padding computed from the input size at every call) are swapped for timm's
Conv2dSameExport with the padding fixed at the model's image size, so the graph holds constant pads
instead of shape arithmetic.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from .defenses.transforms import BitDepth, InputTransform, MedianFilter, make_transform
from .errors import CheckpointError
from .models import WEIGHTS_FILE, Classifier, arch_problem, class_names_problem, image_size_problem
from .runtime import atomic_write_bytes

ONNX_FILE = "model.onnx"  # the cached export inside a run directory
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DEFAULT_OPSET = 17
IN_GRAPH_DEFENSES = ("bits", "median")
REFUSED_DEFENSES = {
    "jpeg": "JPEG coding is not an ONNX operator, so it cannot run inside the graph; export without it and "
    "re-compress the images before the model (birdshield predict --runtime onnx --defense jpeg does)",
    "smoothing": "randomized smoothing is a statistical vote over many noisy forward passes, not one graph; "
    "export the base model and vote around it (birdshield predict --runtime onnx --defense smoothing does)",
}
PREPROCESSING = {
    "input": "float32 RGB in [0, 1], NCHW, named 'images'",
    "resize": "shorter side to image_size, bilinear with antialiasing (PIL Image.BILINEAR)",
    "crop": "centre image_size x image_size",
    "normalization": "inside the graph (mean, std)",
}


class _MedianGraph(nn.Module):
    """MedianFilter.transform in ONNX operators: ONNX has no median, so take the middle of the k*k window
    values with TopK (a selection, so the values equal torch's median exactly)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        if k == 1:
            return x
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (k // 2,) * 4, mode="reflect")
        windows = torch.stack([padded[..., i : i + h, j : j + w] for i in range(k) for j in range(k)], 2)
        middle = k * k // 2
        return windows.topk(middle + 1, dim=2, largest=False).values[:, :, middle]


class _BitsGraph(nn.Module):
    """BitDepth.transform without its BPDA wrapper (which only shapes gradients)."""

    def __init__(self, transform: BitDepth) -> None:
        super().__init__()
        self.inner = transform

    def forward(self, x: Tensor) -> Tensor:
        return self.inner.transform(x)


class _Exported(nn.Module):
    def __init__(self, model: nn.Module, transform: nn.Module | None) -> None:
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x if self.transform is None else self.transform(x))


def graph_transform(defense: str | InputTransform | None, param: float | None = None) -> nn.Module | None:
    """The in-graph form of an input transform (by name or instance); ValueError for jpeg and smoothing."""
    if defense is None or defense == "none":
        return None
    name = defense if isinstance(defense, str) else type(defense).__name__
    key = {"JPEG": "jpeg", "BitDepth": "bits", "MedianFilter": "median"}.get(name, name)
    if key in REFUSED_DEFENSES:
        raise ValueError(f"cannot export --defense {key} into ONNX: {REFUSED_DEFENSES[key]}")
    if key not in IN_GRAPH_DEFENSES:
        raise ValueError(f"unknown defence {key!r}; in-graph defences: {', '.join(IN_GRAPH_DEFENSES)}")
    transform = make_transform(key, param) if isinstance(defense, str) else defense
    if isinstance(transform, MedianFilter):
        return _MedianGraph(transform.kernel)
    return _BitsGraph(transform)


def _defense_meta(transform: nn.Module | None) -> dict[str, Any] | None:
    if isinstance(transform, _MedianGraph):
        return {"name": "median", "kernel": transform.kernel}
    if isinstance(transform, _BitsGraph):
        return {"name": "bits", "bits": transform.inner.bits}
    return None


def static_padded(model: nn.Module, image_size: int) -> nn.Module:
    """A CPU float copy of `model` whose TF "SAME" convolutions pad by constants fixed for image_size."""
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    model = copy.deepcopy(model).float().cpu().eval()
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if isinstance(conv, Conv2dSame):
                fixed = Conv2dSameExport(
                    conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                    conv.dilation, conv.groups, conv.bias is not None,
                )  # fmt: skip
                fixed.load_state_dict(conv.state_dict())
                setattr(parent, name, fixed)
    with torch.no_grad():  # Conv2dSameExport fixes its padding from the first input it sees
        model(torch.zeros(1, 3, image_size, image_size))
    return model


def metadata(
    model: Classifier, defense: dict[str, Any] | None, batch: int | None, source_digest: str | None = None
) -> dict[str, str]:
    """The metadata_props of an export: every value a JSON string."""
    meta = model.meta
    props = {
        "class_names": list(model.class_names),
        "image_size": model.image_size,
        "preprocessing": {**PREPROCESSING, "mean": meta.get("mean"), "std": meta.get("std")},
        "birdshield_version": __version__,
        "arch": meta.get("arch"),
        "defense": defense,
        "batch": "dynamic" if batch is None else batch,
        "birdshield": meta,
        "source_weights_sha256": source_digest,
    }
    return {key: json.dumps(value) for key, value in props.items()}


def graph_bytes(graph: nn.Module, image_size: int, output: str, *, batch: int | None = None) -> bytes:
    """`graph` ([0,1] images in) exported to ONNX by torch's TorchScript exporter, with the input named
    "images" and a dynamic batch (or a fixed `batch`); the one exporter of the package."""
    example = torch.rand(batch or 1, 3, image_size, image_size)
    axes = None if batch else {INPUT_NAME: {0: "batch"}, output: {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # of this exporter: see the module doc
        # Pads reversed with a step -1 Slice are left for onnxruntime to fold when it loads the graph.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            graph.eval(), (example,), buffer, dynamo=False, opset_version=DEFAULT_OPSET,
            input_names=[INPUT_NAME], output_names=[output], dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue()


def onnx_bytes(
    model: Classifier,
    *,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    defense: str | InputTransform | None = None,
    defense_param: float | None = None,
    source_digest: str | None = None,
) -> bytes:
    """The serialized ONNX model (see export_onnx); `source_digest` names the weights file it came from."""
    import onnx

    transform = graph_transform(defense, defense_param)
    graph = _Exported(static_padded(model, model.image_size), transform)
    blob = graph_bytes(graph, model.image_size, OUTPUT_NAME, batch=None if dynamic_batch else batch_size)
    proto = onnx.load_from_string(blob)
    props = metadata(model, _defense_meta(transform), None if dynamic_batch else batch_size, source_digest)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "birdshield", __version__
    return proto.SerializeToString()


def export_onnx(
    model: Classifier,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    defense: str | InputTransform | None = None,
    defense_param: float | None = None,
    source_digest: str | None = None,
) -> Path:
    """Write `model` as ONNX to `path` atomically and return the path.

    dynamic_batch=False fixes the batch dimension at `batch_size`. `defense` ("bits", "median" or such a
    transform, with `defense_param` as in `birdshield predict`) puts that input transform inside the graph;
    "jpeg" and "smoothing" raise ValueError saying why they cannot be one ONNX graph.
    """
    blob = onnx_bytes(
        model, dynamic_batch=dynamic_batch, batch_size=batch_size, defense=defense,
        defense_param=defense_param, source_digest=source_digest,
    )  # fmt: skip
    atomic_write_bytes(Path(path), blob)
    return Path(path)


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Follow torch's thread count, so `birdshield --threads N` sets both runtimes.
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Spinning threads steal a shared CPU from other processes and from image decoding between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(blob: bytes, device: str | torch.device, threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession of a serialized graph on `device`'s providers."""
    import onnxruntime as ort

    return ort.InferenceSession(blob, _session_options(threads), providers=_providers(device))


def _providers(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxClassifier(nn.Module):
    """An onnxruntime session with a birdshield model's face: `model(x)` maps [0,1] NCHW images to logits,
    with `.class_names`, `.image_size` and `.meta` (the export's metadata, decoded).

    An nn.Module without parameters, so code that calls `.eval()`, `.to()` or wraps a model (Defended,
    Smoothed) takes it as it is; the session runs on the providers chosen at load time.
    """

    def __init__(
        self, source: str | Path | bytes, device: str | torch.device = "cpu", threads: int | None = None
    ) -> None:
        super().__init__()
        self.path = None if isinstance(source, bytes) else Path(source)
        blob = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.digest = hashlib.sha256(blob).hexdigest()  # identifies the graph and its weights (resume)
        self.session = session(blob, device, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = {key: json.loads(value) for key, value in props.items()}
        if "class_names" not in self.meta or "image_size" not in self.meta:
            raise ValueError(f"{source if self.path else 'ONNX model'}: no birdshield metadata (class names)")
        _check_metadata(self.meta, str(self.path or "ONNX model"))
        self.class_names: list[str] = list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @classmethod
    def from_model(cls, model: Classifier, device: str | torch.device = "cpu") -> OnnxClassifier:
        """Export `model` in memory (nothing written) and load it."""
        return cls(onnx_bytes(model), device)

    def forward(self, x: Tensor) -> Tensor:
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path or 'in-memory model'}, providers={self.session.get_providers()}"


def _check_metadata(meta: dict[str, Any], source: str) -> None:
    """CheckpointError naming `source` and the field, for metadata a run directory's loader would refuse:
    the class names and image size come from the file (the architecture is only recorded there)."""
    checks = {
        "class_names": class_names_problem(meta["class_names"]),
        "image_size": image_size_problem(meta["image_size"]),
        "arch": arch_problem(meta["arch"]) if meta.get("arch") is not None else None,
    }
    for field, problem in checks.items():
        if problem:
            raise CheckpointError(f"{source}: metadata field {field!r} {problem}")


def weights_digest(run_dir: Path) -> str:
    """SHA-256 of a run's weights file (its header embeds the class names and the rest of the metadata)."""
    h = hashlib.sha256()
    with open(Path(run_dir) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_model(source: str | Path | None, device: str | torch.device = "cpu") -> OnnxClassifier:
    """An OnnxClassifier of an .onnx file, of the built-in model (None / "imagenet-birds", exported in
    memory), or of a run directory through its cached export RUN_DIR/model.onnx (`birdshield.load`).

    The cache is used only when it was exported from these very weights and class names (their digest is
    in its metadata; file times can lie: `cp -p` of other weights keeps an old time) and is a plain export
    (no in-graph defence, dynamic batch); otherwise the run is exported again. A read-only run directory
    is exported in memory every time.
    """
    from .models import IMAGENET_BIRDS, imagenet_birds_model, load_checkpoint, read_metadata
    from .runtime import pick_device

    device = pick_device(str(device))
    if source in (None, IMAGENET_BIRDS):
        return OnnxClassifier.from_model(imagenet_birds_model(), device)
    path = Path(source)
    if path.suffix == ".onnx":
        return OnnxClassifier(path, device)
    run_dir = path.parent if path.is_file() else path
    names, digest = read_metadata(run_dir)["class_names"], weights_digest(run_dir)
    cached = _cached_export(run_dir / ONNX_FILE, device)
    if cached and cached.meta.get("source_weights_sha256") == digest and cached.class_names == names:
        return cached
    blob = onnx_bytes(load_checkpoint(run_dir), source_digest=digest)
    with contextlib.suppress(OSError):  # a read-only run directory: exported in memory every time
        atomic_write_bytes(run_dir / ONNX_FILE, blob)
    return OnnxClassifier(blob, device)


def _cached_export(path: Path, device: torch.device) -> OnnxClassifier | None:
    """The plain export at `path`, or None: missing, unreadable, defended or of a fixed batch."""
    if not path.is_file():
        return None
    try:
        cached = OnnxClassifier(path, device)
    except Exception:  # a damaged or foreign file: exported again
        return None
    plain = cached.meta.get("defense") is None and cached.meta.get("batch") == "dynamic"
    return cached if plain else None
