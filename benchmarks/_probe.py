"""A small trained run for the benchmarks: the offline ImageNet tf_efficientnet_lite0 with a linear head
fitted on its frozen features of a dataset's train split (optionally of Gaussian-noised copies too, so the
model keeps its answer under the noise of randomized smoothing). A minute or two on a CPU; deterministic."""

from __future__ import annotations

import time
from pathlib import Path


def make_probe_run(data_root: Path, run_dir: Path, noise_sigma: float = 0.0, noisy_copies: int = 0) -> float:
    """Write a run directory at ``run_dir``; returns the seconds it took."""
    import torch
    import torch.nn.functional as F

    from birdshield import data
    from birdshield.models import create_model, save_checkpoint
    from birdshield.runtime import tune_cpu_allocator

    start = time.perf_counter()
    tune_cpu_allocator()
    torch.manual_seed(0)
    dataset = data.discover(data_root)
    model = create_model(list(dataset.class_names)).eval().to(memory_format=torch.channels_last)
    samples = dataset.splits["train"]
    gen = torch.Generator().manual_seed(0)
    feats, labels = [], []
    with torch.inference_mode():
        for good, x, _ in data.read_batches([s.path for s in samples], model.image_size, 50):
            if x is None:
                continue
            y = torch.tensor([samples[i].label for i in good])
            views = [x] + [x + noise_sigma * torch.randn(x.shape, generator=gen) for _ in range(noisy_copies)]
            for view in views:
                feats.append(model.forward_features(view))
                labels.append(y)
    xs, ys = torch.cat(feats).clone(), torch.cat(labels)
    head = model.head
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(xs), ys) + 1e-4 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    save_checkpoint(model, run_dir, {"note": "benchmark probe", "noise_sigma": noise_sigma})
    return time.perf_counter() - start
