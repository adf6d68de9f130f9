"""Patch-wise detection (MAEDiff paper Algorithm 2) for every network that predicts x0 from a partly
noised slice: the patch methods, and cDDPM with the whole slice as its one patch. What a method adds
reaches its network as keyword arguments (``model_kwargs``): MAEDiff's visible grid cells, cDDPM's
clean slice. Training (Algorithm 1) is diffusion.py's.

The loop is numpy and the same on both runtimes (runtime.py): the runtime draws the noise and runs
the network. It batches all (member, slice, patch position) triples of a volume together, a member
being one noise level of one of the reconstructions drawn; patches without brain are skipped (their
prediction would be discarded by the brain mask anyway). Several t_test levels (cDDPM) reconstruct
each with its own noise and are averaged; several reconstructions (scoring.py) each draw their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .diffusion_config import DiffusionConfig, PatchConfig, alphas_cumprod, noised_input, patch_masks, q_sample
from .errors import CardError

if TYPE_CHECKING:
    from .methods.base import Progress, Sampling
    from .runtime import Runtime

# (x0 of the batch in [-1, 1], its noised-patch masks) -> the network's keyword arguments
ModelKwargs = Callable[[np.ndarray, np.ndarray], dict]


def reconstruct_patches(runtime: Runtime, patch: PatchConfig, diffusion: DiffusionConfig, image: np.ndarray,
                        mask: np.ndarray, sampling: Sampling, model_kwargs: ModelKwargs,
                        progress: Progress) -> np.ndarray:
    """Algorithm 2, batched: ``sampling.samples`` healthy reconstructions (samples, z, y, x) in 0..1 of
    ``image`` (0..1), each from its own noise. With several levels, each is the mean of the
    reconstructions at every level; sample k's level i is noised from seed + k * levels + i (so the
    first sample of one level is what a model of one level gives)."""
    levels = sampling.levels
    positions = np.array(patch.positions(sampling.stride), dtype=np.int64)
    x0 = (image.astype(np.float32) * 2 - 1)[:, None]  # (Z, 1, H, W) in [-1, 1]
    extent = patch.patch_extent
    # Every (sample, level) pair is a member with its own noise; all members' patches batch together.
    members = np.array([t_test for _ in range(sampling.samples) for t_test in levels], dtype=np.int64)
    jobs = np.array([(member, z, k) for member in range(len(members)) for z in range(len(x0))
                     for k, (y, x) in enumerate(positions) if mask[z, y:y + extent, x:x + extent].any()],
                    dtype=np.int64).reshape(-1, 3)
    alpha_bar = alphas_cumprod(diffusion)
    xt = np.stack([q_sample(alpha_bar, x0, t_test, runtime.noise(diffusion.noise, x0.shape, sampling.seed + i))
                   for i, t_test in enumerate(members)])  # (members, Z, 1, H, W)
    total = np.zeros_like(xt)
    count = np.zeros_like(xt)

    def run(begin: int, end: int) -> None:
        member, z, k = jobs[begin:end].T
        masks = patch_masks(positions[k], patch)
        inputs = {"x": noised_input(x0[z], xt[member, z], masks), "t": members[member],
                  **model_kwargs(x0[z], masks)}
        prediction = runtime.run("denoiser", inputs)[0]
        np.add.at(total, (member, z), prediction * masks)
        np.add.at(count, (member, z), masks)

    def report(done: int, size: int) -> None:
        progress("reconstruct", done / len(jobs), f"{done}/{len(jobs)} patches, batch {size}")

    runtime.batches(len(jobs), sampling.batch, run, report)
    # Overlaps are averaged; pixels no patch touched (no brain nearby) keep their own value.
    rec = np.where(count > 0, total / np.maximum(count, 1), x0)
    if not np.isfinite(rec).all():
        raise CardError("the model's reconstruction has NaN or infinite voxels: its weights are broken")
    each = np.clip((rec[:, :, 0] + 1) / 2, 0, 1)  # each member's reconstruction in 0..1
    return each.reshape(sampling.samples, len(levels), *each.shape[1:]).mean(1).astype(np.float32)
