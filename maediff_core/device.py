"""The compute device, kept apart from training so that detection imports nothing it does not need."""

from __future__ import annotations

import torch

from .files import VolumeError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VolumeError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)
