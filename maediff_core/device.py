"""The compute device and batching on it, kept apart from training so that detection imports nothing it
does not need."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import OptionError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def in_batches(count: int, batch: int, run: Callable[[int, int], None], done: Callable[[int, int], None]) -> None:
    """``run(begin, end)`` over ``count`` jobs, ``batch`` at a time, then ``done(jobs done, batch)``; a
    CUDA out-of-memory error halves the batch and runs that part again (``run`` must change nothing
    before its forward pass succeeds)."""
    begin = 0
    while begin < count:
        end = min(count, begin + batch)
        try:
            run(begin, end)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise OptionError("out of GPU memory even for a batch of one: use --device cpu") from None
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()
            continue
        begin = end
        done(begin, batch)
