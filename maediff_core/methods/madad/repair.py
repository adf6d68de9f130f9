"""MAD-AD's training objectives and its detection: random masked-and-noised latent regions to learn to
remove, and a 10-step DDIM that repairs whatever cells the network finds corrupted.

Detection starts from the mean latent of the input with no noise added (the input is taken as step T
of a masked forward process), updates only the cells whose predicted keep-probability is below 0.5,
and scores the change the repair makes, |decode(z_repaired) - decode(z)|. The reconstruction returned
is the input plus that change, so the engine's score |x - x_rec| is MAD-AD's and the healthy volume
shown keeps the input's detail where nothing was repaired.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...device import in_batches
from ...diffusion import Diffusion
from ...diffusion_config import noised_input
from ...errors import CardError
from .config import AutoencoderConfig, LatentConfig
from .networks import MaskedLatentNet


def brain_cells(brain: torch.Tensor, downsampling: int, fraction: float) -> torch.Tensor:
    """(B, 1, H, W) brain mask -> (B, 1, h, w) bool: latent cells with at least ``fraction`` brain."""
    return F.avg_pool2d(brain.float(), downsampling) >= fraction


def patch_shape(config: LatentConfig, generator: torch.Generator | None) -> tuple[int, int]:
    """A masked patch's height and width in latent cells, drawn independently (MAD-AD code)."""
    choice = torch.multinomial(torch.tensor(config.probabilities), 2, replacement=True, generator=generator)
    return config.sizes[int(choice[0])], config.sizes[int(choice[1])]


def corrupted_cells(brain: torch.Tensor, config: LatentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1, h, w) bool: the latent cells to noise. One patch shape per batch (:func:`patch_shape`);
    per sample a ratio ~ U(0, max_ratio) of the patches; never a non-brain cell."""
    b, _, h, w = brain.shape
    sy, sx = patch_shape(config, generator)
    rows, cols = math.ceil(h / sy), math.ceil(w / sx)  # a partial patch at the border where a size does not divide
    patches = rows * cols
    ratio = torch.rand(b, generator=generator) * config.max_ratio
    count = patches - torch.floor(patches * (1 - ratio))  # the reference keeps int(n (1 - ratio)) patches
    rank = torch.rand(b, patches, generator=generator).argsort(1).argsort(1)
    chosen = (rank < count[:, None]).view(b, 1, rows, cols)
    cells = chosen.repeat_interleave(sy, 2).repeat_interleave(sx, 3)[:, :, :h, :w]
    return cells.to(brain.device) & brain


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)), summed over a sample's latent, averaged over the batch."""
    return 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1).flatten(1).sum(1).mean()


def autoencoder_loss(autoencoder: nn.Module, x0: torch.Tensor, brain: torch.Tensor | None,
                     generator: torch.Generator | None, config: AutoencoderConfig) -> torch.Tensor:
    """Training: L1 of a posterior sample's decoding + kl_weight x KL (LDM's objective without its
    perceptual and adversarial terms), over the whole slice (``brain`` unused: the latent must hold
    the background too). In eval mode: L1 of the mean's decoding, what detection uses."""
    if not autoencoder.training:
        return F.l1_loss(autoencoder(x0)[0], x0)
    shape = (len(x0), config.latent_channels, x0.shape[-2] // config.downsampling, x0.shape[-1] // config.downsampling)
    noise = torch.randn(shape, generator=generator).to(x0.device, x0.dtype)
    reconstruction, mu, sigma = autoencoder(x0, noise)
    return F.l1_loss(reconstruction, x0) + config.kl_weight * kl_divergence(mu, sigma)


def denoiser_loss(denoiser: nn.Module, x0: torch.Tensor, brain: torch.Tensor, generator: torch.Generator | None,
                  network: MaskedLatentNet, diffusion: Diffusion) -> torch.Tensor:
    """MSE(z0) + mask_weight x MSE(keep) on latents whose corrupted cells are noised to a random t
    (the reference encodes a posterior sample, scaled; the autoencoder is frozen)."""
    config = network.latent
    with torch.no_grad():
        mu, sigma = network.autoencoder.encode(x0)
        z0 = (mu + sigma * torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)) * network.denoiser.scale
    cells = brain_cells(brain, config.autoencoder.downsampling, config.brain_fraction)
    corrupted = corrupted_cells(cells, config, generator).to(z0.dtype)
    t = diffusion.sample_t(len(z0), generator).to(z0.device)
    zt = noised_input(z0, diffusion.q_sample(z0, t, diffusion.noise_like(z0, generator)), corrupted)
    prediction, keep = denoiser(zt, t)
    return F.mse_loss(prediction, z0) + config.mask_weight * F.mse_loss(torch.sigmoid(keep), 1 - corrupted)


@torch.no_grad()
def fit_latent_scale(autoencoder: nn.Module, slices: torch.Tensor, batch: int = 32) -> float:
    """1 / standard deviation of the mean latents of ``slices`` (LDM's scale factor)."""
    latents = torch.cat([autoencoder.encode(slices[i:i + batch])[0] for i in range(0, len(slices), batch)])
    return float(1.0 / latents.float().std().clamp(min=1e-6))


def ddim_step(zt: torch.Tensor, z0: torch.Tensor, t: int, alpha_bar: torch.Tensor, eta: float,
              noise: torch.Tensor) -> torch.Tensor:
    """z_{t-1} from z_t and a prediction of z_0 (DDIM, Song et al. 2021, Eq. 12), t in 1..T."""
    abar_t = float(alpha_bar[t - 1])
    abar_prev = float(alpha_bar[t - 2]) if t > 1 else 1.0
    eps = (zt - math.sqrt(abar_t) * z0) / math.sqrt(1 - abar_t)
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    return math.sqrt(abar_prev) * z0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps + sigma * noise


def repair_latents(denoiser: nn.Module, z: torch.Tensor, start: int, alpha_bar: torch.Tensor, eta: float,
                   noise: torch.Tensor) -> torch.Tensor:
    """``start`` DDIM steps from z (taken as z_start), each moving only the cells the network finds
    corrupted (keep-probability < 0.5); ``noise``: (start, *z.shape), step t uses noise[t - 1]."""
    for t in range(start, 0, -1):
        z0, keep = denoiser(z, torch.full((len(z),), t, device=z.device))
        z = torch.where(keep < 0, ddim_step(z, z0.to(z.dtype), t, alpha_bar, eta, noise[t - 1]), z)
    return z


@torch.no_grad()
def repair_volume(model: MaskedLatentNet, diffusion: Diffusion, image: np.ndarray, mask: np.ndarray,
                  levels: tuple[int, ...], seed: int, batch: int, device: torch.device,
                  progress: Callable[[str, float, str], None], samples: int = 1) -> np.ndarray:
    """``samples`` repairs (samples, z, y, x) in 0..1: the input plus the change MAD-AD's repair makes,
    for every slice with brain; with several starting steps, each the mean of the results, sample k's
    level i drawing its noise from seed + k * levels + i."""
    x = torch.from_numpy(image * 2.0 - 1.0).float().unsqueeze(1)  # (Z, 1, H, W) in [-1, 1]
    slices = torch.tensor([z for z in range(len(x)) if mask[z].any()], dtype=torch.long)
    down = model.latent.autoencoder.downsampling
    shape = (model.latent.autoencoder.latent_channels, x.shape[-2] // down, x.shape[-1] // down)
    alpha_bar = diffusion.alpha_bar
    members = [start for _ in range(samples) for start in levels]
    change = torch.zeros(len(members), *x.shape)
    for i, start in enumerate(members):
        noise = torch.randn(start, len(x), *shape, generator=torch.Generator().manual_seed(seed + i))

        def run(begin: int, end: int, i: int = i, start: int = start, noise: torch.Tensor = noise) -> None:
            chosen = slices[begin:end]
            inputs = x[chosen].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = model.encode(inputs).float()
                repaired = repair_latents(model.denoiser, z, start, alpha_bar, model.latent.eta,
                                          noise[:, chosen].to(device))
                decoded = model.decode(torch.cat([repaired, z])).float()
            change[i, chosen] = (decoded[:len(z)] - decoded[len(z):]).cpu()

        def report(done: int, size: int, i: int = i, start: int = start) -> None:
            progress("reconstruct", (i + done / len(slices)) / len(members),
                     f"{done}/{len(slices)} slices, {start} steps, batch {size}")

        in_batches(len(slices), batch, run, report)
    if not torch.isfinite(change).all():
        raise CardError("the model's repair has NaN or infinite voxels: its weights are broken")
    each = (((x + change).squeeze(2) + 1.0) / 2.0).clamp(0.0, 1.0)
    return each.view(samples, len(levels), *each.shape[1:]).mean(1).numpy().astype(np.float32)
