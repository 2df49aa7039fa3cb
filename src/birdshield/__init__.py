"""birdshield: robust bird-species classifiers, attacks, defences and honest robustness reports."""

__version__ = "0.1.0"


def load(run_dir_or_onnx, device="cpu", runtime="torch"):
    """Load a trained run as an nn.Module in eval mode: [0,1] images in, logits out, with .class_names.

    runtime="onnx" gives a birdshield.export.OnnxClassifier with the same call: from a .onnx file, or from a
    run directory through its cached export (RUN_DIR/model.onnx, re-exported when older than the weights).
    """
    if runtime == "onnx":
        from .export import load_onnx

        return load_onnx(run_dir_or_onnx, device)
    if runtime != "torch":
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    from .models import load as _load

    return _load(run_dir_or_onnx, device)
