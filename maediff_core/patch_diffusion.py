"""Patch-wise diffusion in image space (MAEDiff paper Algorithms 1 and 2), for every network that
predicts x0 from a partly noised slice: the patch methods, and cDDPM with the whole slice as its one
patch. What a method adds reaches its network as keyword arguments (``model_kwargs``): MAEDiff's
visible grid cells, cDDPM's clean slice.

Detection batches all (member, slice, patch position) triples of a volume together, a member being
one noise level of one of the reconstructions drawn; patches without brain are skipped (their
prediction would be discarded by the brain mask anyway), and a CUDA out-of-memory error halves the
batch and retries. Several t_test levels (cDDPM) reconstruct each with its own noise and are
averaged; several reconstructions (scoring.py) each draw their own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .device import in_batches
from .diffusion import Diffusion, PatchConfig, noised_input, patch_l1, patch_masks, random_corners
from .errors import CardError

# (x0 of the batch in [-1, 1], its noised-patch masks) -> the network's keyword arguments
ModelKwargs = Callable[[torch.Tensor, torch.Tensor], dict]


def no_kwargs(x0: torch.Tensor, masks: torch.Tensor) -> dict:
    return {}


def training_step(model: nn.Module, x0: torch.Tensor, generator: torch.Generator, patch: PatchConfig,
                  diffusion: Diffusion, model_kwargs: ModelKwargs = no_kwargs) -> torch.Tensor:
    """Algorithm 1 on a batch: noise one patch per slice (or the whole slice), predict x0, L1 inside
    the noised region."""
    n = x0.shape[0]
    t = diffusion.sample_t(n, generator).to(x0.device)
    noise = diffusion.noise_like(x0, generator)
    mask = patch_masks(random_corners(n, patch, generator), patch).to(x0.device, x0.dtype)
    x_tilde = noised_input(x0, diffusion.q_sample(x0, t, noise), mask)
    return patch_l1(model(x_tilde, t, **model_kwargs(x0, mask)), x0, mask)


@torch.no_grad()
def reconstruct_patches(model: nn.Module, patch: PatchConfig, diffusion: Diffusion, image: np.ndarray,
                        mask: np.ndarray, levels: tuple[int, ...], stride: int, seed: int, batch: int,
                        device: torch.device, progress: Callable[[str, float, str], None],
                        model_kwargs: ModelKwargs = no_kwargs, samples: int = 1) -> np.ndarray:
    """Algorithm 2, batched: ``samples`` healthy reconstructions (samples, z, y, x) in 0..1 of
    ``image`` (0..1), each from its own noise. With several levels, each is the mean of the
    reconstructions at every level; sample k's level i is noised from seed + k * levels + i (so the
    first sample of one level is what a model of one level gives)."""
    positions = patch.positions(stride)
    x0 = torch.from_numpy(image * 2.0 - 1.0).float().unsqueeze(1)  # (Z, 1, H, W) in [-1, 1]
    extent = patch.patch_extent
    # Every (sample, level) pair is a member with its own noise; all members' patches batch together.
    members = [t_test for _ in range(samples) for t_test in levels]
    jobs = [(member, z, k) for member in range(len(members)) for z in range(len(x0))
            for k, (y, x) in enumerate(positions) if mask[z, y:y + extent, x:x + extent].any()]
    xt = torch.stack([diffusion.q_sample(x0, torch.full((len(x0),), t_test),
                                         diffusion.noise_like(x0, torch.Generator().manual_seed(seed + i)))
                      for i, t_test in enumerate(members)])  # (members, Z, 1, H, W)
    corners = torch.tensor(positions, dtype=torch.long)
    total = torch.zeros_like(xt)
    count = torch.zeros_like(xt)

    def run(begin: int, end: int) -> None:
        chunk = jobs[begin:end]
        member, z = torch.tensor([j[0] for j in chunk]), torch.tensor([j[1] for j in chunk])
        masks = patch_masks(corners[[j[2] for j in chunk]], patch)
        inputs = noised_input(x0[z], xt[member, z], masks).to(device)
        kwargs = model_kwargs(x0[z].to(device), masks.to(device))
        steps = torch.tensor(members, device=device)[member.to(device)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prediction = model(inputs, steps, **kwargs).float().cpu()
        total.index_put_((member, z), prediction * masks, accumulate=True)
        count.index_put_((member, z), masks, accumulate=True)

    def report(done: int, size: int) -> None:
        progress("reconstruct", done / len(jobs), f"{done}/{len(jobs)} patches, batch {size}")

    in_batches(len(jobs), batch, run, report)
    # Overlaps are averaged; pixels no patch touched (no brain nearby) keep their own value.
    rec = torch.where(count > 0, total / count.clamp(min=1), x0)
    if not torch.isfinite(rec).all():
        raise CardError("the model's reconstruction has NaN or infinite voxels: its weights are broken")
    each = ((rec.squeeze(2) + 1.0) / 2.0).clamp(0.0, 1.0)  # each member's reconstruction in 0..1
    return each.view(samples, len(levels), *each.shape[1:]).mean(1).numpy().astype(np.float32)
