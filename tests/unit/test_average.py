"""Weight averaging (--ema-decay): the average moves toward the weights at its decay, early steps faster."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_CLASSES

from birdshield.models import create_model
from birdshield.training.average import WeightAverage


def _gap_closed(average: WeightAverage, model, step: int) -> float:
    """Move every weight by 1, update the average, and return the fraction of its gap it closed."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in average.model.parameters()]
    average.update(model, step)
    closed = [
        ((a - b) / (m - b)).mean().item()
        for a, b, m in zip(average.model.parameters(), before, model.parameters(), strict=True)
    ]
    assert max(closed) - min(closed) < 1e-4  # every weight alike
    return closed[0]


def test_weight_average_moves_toward_the_weights_by_one_minus_its_decay():
    model = create_model(TINY_CLASSES, arch="test_efficientnet", weights=None, image_size=48)
    average = WeightAverage(model, decay=0.9)
    assert _gap_closed(average, model, step=0) == pytest.approx(0.9, abs=1e-4)  # warm-up: decay 1/10
    assert _gap_closed(average, model, step=10_000) == pytest.approx(0.1, abs=1e-4)
    assert not any(p.requires_grad for p in average.model.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_weight_average_refuses_a_decay_outside_0_1(decay):
    model = create_model(TINY_CLASSES, arch="test_efficientnet", weights=None, image_size=48)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay)
