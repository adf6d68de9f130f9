"""torch's compute device and batching on it, kept apart from training so that detection imports nothing it
does not need."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import OptionError
from .runtime import in_batches as batches


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def in_batches(count: int, batch: int, run: Callable[[int, int], None], done: Callable[[int, int], None]) -> None:
    """runtime.in_batches, a CUDA out-of-memory error halving the batch."""
    batches(count, batch, run, done, (torch.cuda.OutOfMemoryError,), torch.cuda.empty_cache)
