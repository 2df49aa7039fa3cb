"""birdshield: robust bird-species classifiers, attacks, defences and honest robustness reports."""

__version__ = "0.1.0"


def load(run_dir, device="cpu"):
    """Load a trained run as an nn.Module in eval mode: [0,1] images in, logits out, with .class_names."""
    from .models import load as _load

    return _load(run_dir, device)
