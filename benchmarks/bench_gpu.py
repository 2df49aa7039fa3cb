"""The CUDA check of deployment: export a run to ONNX, check it against torch on the GPU, and time the model.

    python benchmarks/bench_gpu.py [RUN_DIR] [--batch 256] [--seconds 5]

RUN_DIR defaults to the offline ImageNet bird model. Prints onnxruntime's providers, the export's parity
with torch (max |delta logit|, top-1 agreement on random images), and images/s of the model alone (inputs
already in memory, the forward only) for: torch on the GPU in float32 and in bf16 autocast with
channels_last (what `birdshield predict` uses), onnxruntime on CUDA when its CUDA provider is installed,
and onnxruntime on the CPU for scale. End-to-end images/s from files (decoding included) are
bench_scale.py's `predict` step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def rate(fn, x, seconds: float) -> float:
    """Images per second of fn(x), after a warm-up call, synchronising CUDA around the timing."""
    import torch

    fn(x)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += len(x)
    sync()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", help="run directory (default: the offline ImageNet bird model)")
    p.add_argument("--batch", type=int, default=256, help="images per forward")
    p.add_argument("--seconds", type=float, default=5.0, help="timing per side")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch

    from birdshield import models
    from birdshield.export import OnnxClassifier, export_onnx

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU: CPU only"
    providers = ort.get_available_providers()
    print(f"torch {torch.__version__} on {name}; onnxruntime {ort.__version__} {providers}")
    model = models.load_torch(args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx")
        print(f"export: {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
        onnx_gpu = OnnxClassifier(path, device)
        onnx_cpu = OnnxClassifier(path, "cpu")
    print(f"onnxruntime session for {device}: {onnx_gpu.session.get_providers()}")
    size = model.image_size
    gpu = models.prepare_for_inference(model, device)
    x = torch.rand(args.batch, 3, size, size, device=device)
    with torch.inference_mode():
        ref = gpu(x).float()
    out = onnx_gpu(x).float()
    same = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    print(f"parity ONNX vs torch on {device}: max |delta logit| {(out - ref).abs().max().item():.2e}, "
          f"top-1 agreement {same:.1%} of {args.batch} random images")  # fmt: skip

    @torch.inference_mode()
    def fp32(x: torch.Tensor) -> torch.Tensor:
        return gpu(x)

    cl = x.contiguous(memory_format=torch.channels_last)
    gpu_cl = gpu.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return gpu_cl(x)

    sides = {f"torch {device} float32": (fp32, x), f"torch {device} bf16 channels_last": (bf16, cl)}
    if "CUDAExecutionProvider" in onnx_gpu.session.get_providers():
        sides["onnxruntime CUDA"] = (onnx_gpu, x)
    sides["onnxruntime CPU (batch 32)"] = (onnx_cpu, x[:32].cpu())
    for label, (fn, inputs) in sides.items():
        print(f"  {label:<36} {rate(fn, inputs, args.seconds):10.0f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
