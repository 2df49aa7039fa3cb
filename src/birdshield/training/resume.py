"""Resume state: one safetensors file (backbone and optimiser tensors) with the JSON state in its header,
written atomically, so a run killed at any moment continues from its last finished epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..models import Classifier
from ..runtime import atomic_write_bytes
from .average import WeightAverage

RESUME_FILE = "resume.safetensors"


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


def save_resume(
    path: Path,
    model: Classifier,
    opt: torch.optim.Optimizer,
    state: dict,
    average: WeightAverage | None = None,
) -> None:
    tensors = _prefixed("model", model.backbone.state_dict())
    if average is not None:
        tensors.update(_prefixed("average", average.state_dict()))
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            elif value is not None:
                scalars.setdefault(str(idx), {})[name] = value
    state = {**state, "param_groups": opt_state["param_groups"], "optim_scalars": scalars}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"state": json.dumps(state)}))


def load_resume(
    path: Path, model: Classifier, opt: torch.optim.Optimizer, average: WeightAverage | None = None
) -> dict:
    """Load the weights, optimiser state and weight average into `model`, `opt` and `average`; return
    the run's state (epoch, ...)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    tensors = safetensors.torch.load_file(str(path))
    model.backbone.load_state_dict(_unprefixed("model", tensors), strict=True)
    if average is not None:
        average.load_state_dict(_unprefixed("average", tensors))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for idx, entry in state.pop("optim_scalars").items():
        per_param.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state
