"""A run's last checkpoint: the trained module, the optimiser, the EMA and the torch generator in one
safetensors file; the counters, the numpy generator and the card in its JSON (modelfile.pairs commits
the two together). Resuming from it continues the run exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..modelfile import load_weights, save_pair

COUNTERS = ("epoch", "step", "best_val", "seconds")


def save_checkpoint(path: Path, card: dict, counters: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: AveragedModel | None, generator: torch.Generator, rng: np.random.Generator) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = generator.get_state()
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    resume = {**{k: counters[k] for k in COUNTERS}, "param_groups": state["param_groups"],
              "numpy_rng": rng.bit_generator.state}
    save_pair(tensors, {"card": card, "resume": resume}, path)


def load_checkpoint(weights: Path, resume: dict, device: torch.device, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, ema: AveragedModel | None, generator: torch.Generator,
                    rng: np.random.Generator) -> dict:
    """Everything given, as the checkpoint (``weights`` and its JSON's ``resume``) left it; returns
    its counters."""
    tensors = load_weights(weights, model, "cpu", prefix="model.")
    optimizer_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": resume["param_groups"]})
    if ema is not None:
        ema.load_state_dict({k[len("ema."):]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")})
    generator.set_state(tensors["rng.torch"])
    rng.bit_generator.state = resume["numpy_rng"]
    return {k: resume[k] for k in COUNTERS}
