"""birdshield: robust bird-species classifiers, attacks, defences and honest robustness reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"
IMAGENET_BIRDS = "imagenet-birds"  # the built-in model: the offline ImageNet backbone's 59 bird classes


def load(source: str | Path | None = None, *, runtime: str | None = None, device: str = "auto") -> nn.Module:
    """A model ready to predict or be attacked: [0,1] images (N, 3, H, W) in, logits out, with
    ``.class_names``, ``.image_size`` and ``.meta``.

    source: a run directory written by `birdshield train` (or a file in it), an ``.onnx`` file written by
    `birdshield export`, or None / "imagenet-birds" for the built-in model (the offline ImageNet backbone
    restricted to its 59 bird classes: names birds with no training at all).
    runtime: "torch" (what attacks and training need: gradients), "onnx" (onnxruntime: forward only, about
    twice torch eager's speed on a CPU; a run directory's export is cached in it as model.onnx, made again
    when the weights or class names change), or "auto" (onnx for an .onnx file and, on a CPU, for a run
    directory; torch otherwise). Default: onnx for an .onnx file, torch for the rest.
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N". A torch model comes in eval mode, in
    channels_last on a CPU (faster convolutions there).
    """
    from . import models

    if runtime is None:
        runtime = "onnx" if source is not None and Path(source).suffix == ".onnx" else "torch"
    if models.resolve_runtime(runtime, device, source) == "onnx":
        from .export import onnx_model

        return onnx_model(source, device)
    return models.prepare_for_inference(models.load_torch(source), device)
