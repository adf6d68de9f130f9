"""The training slices of a healthy cohort, in memory, as (volume, slice) pairs of brain-bearing slices."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

MIN_BRAIN_FRACTION = 0.01  # slices with less brain than this carry no anatomy to learn


def brain_slices(mask: np.ndarray) -> np.ndarray:
    fraction = mask.reshape(mask.shape[0], -1).mean(1)
    return np.flatnonzero(fraction >= MIN_BRAIN_FRACTION)


class SliceData:
    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]):
        self.images = [torch.from_numpy(im * 2.0 - 1.0) for im in images]  # model input in [-1, 1]
        self.masks = [torch.from_numpy(m.astype(bool)) for m in masks]
        self.slices = [brain_slices(m) for m in masks]
        if not any(len(s) for s in self.slices):
            raise InputError("no slice with brain in the training volumes")

    def epoch_size(self, per_volume: int) -> int:
        """How many (volume, slice) pairs epoch_order draws."""
        return per_volume * sum(1 for s in self.slices if len(s))

    def epoch_order(self, rng: np.random.Generator, per_volume: int) -> list[tuple[int, int]]:
        pairs = [(v, int(rng.choice(s))) for v, s in enumerate(self.slices) if len(s) for _ in range(per_volume)]
        return [pairs[i] for i in rng.permutation(len(pairs))]

    def batch(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) slices in [-1, 1] and their brain masks."""
        return (torch.stack([self.images[v][z] for v, z in pairs]).unsqueeze(1),
                torch.stack([self.masks[v][z] for v, z in pairs]).unsqueeze(1).float())

    def spread(self, count: int) -> torch.Tensor:
        """At most ``count`` brain slices (B, 1, H, W) evenly spread over all of them."""
        pairs = [(v, int(z)) for v, s in enumerate(self.slices) for z in s]
        chosen = np.linspace(0, len(pairs) - 1, min(count, len(pairs))).astype(int)
        return self.batch([pairs[i] for i in chosen])[0]
