"""The forward process in torch, and the x0-prediction objective (MAEDiff paper Algorithm 1).

MAEDiff never runs a sampling chain: training predicts x0 from a partly noised slice, and detection
makes one x0 prediction per patch position at a fixed t_test (paper Sec. 3.1, Algorithm 2;
patch_diffusion.py). cDDPM does the same at several noise levels and averages the predictions (its
ensemble of t_test). The configurations, the schedule and the patch masks are diffusion_config.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .diffusion_config import DiffusionConfig, PatchConfig, alphas_cumprod, noised_input, patch_masks
from .noise import GRADIENTS, SimplexConfig, fractal


def simplex_noise(shape: tuple[int, int, int, int], generator: torch.Generator | None = None,
                  config: SimplexConfig = SimplexConfig(), device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fractal simplex noise of ``shape`` (B, C, H, W), an independent field per sample and channel,
    computed on ``device``. Reproducible from ``generator`` (a CPU generator, so results do not
    depend on the device)."""
    b, c, h, w = shape
    n = b * c
    perm = torch.argsort(torch.rand(n, 256, generator=generator), dim=1)  # a permutation per field
    perm = torch.cat([perm, perm], 1).to(device)
    # A random offset per field: otherwise every field would be zero at the origin.
    offset = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 256).to(device, dtype)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    rows = torch.arange(n, device=device)[:, None] * 512
    gradients = torch.from_numpy(GRADIENTS).to(device, dtype)
    return fractal(xs.reshape(1, -1), ys.reshape(1, -1), offset, perm, rows, gradients, config).reshape(b, c, h, w)


def make_noise(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator | None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Diffusion noise: 'simplex' (the method's) or 'gaussian'."""
    if kind == "simplex":
        return simplex_noise(shape, generator, device=device)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator).to(device)
    raise ValueError(f"noise must be 'simplex' or 'gaussian', got {kind!r}")


class Diffusion:
    """q(x_t | x_0) with simplex or Gaussian noise."""

    def __init__(self, config: DiffusionConfig = DiffusionConfig()):
        self.config = config
        self.alpha_bar = torch.from_numpy(alphas_cumprod(config))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for t in 1..T (one per sample)."""
        abar = self.alpha_bar.to(x0.device)[t - 1].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def noise_like(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return make_noise(self.config.noise, tuple(x0.shape), generator, device=x0.device).to(x0.dtype)

    def sample_t(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """t ~ Uniform{1..T} (Algorithm 1)."""
        return torch.randint(1, self.config.timesteps + 1, (n,), generator=generator)


def random_corners(n: int, config: PatchConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One training patch per sample, on the grid-aligned positions (s divisible by r, Sec. 3.2)."""
    options = torch.tensor(config.positions(config.grid), dtype=torch.long)
    return options[torch.randint(len(options), (n,), generator=generator)]


def patch_l1(prediction: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |x0 - prediction| over the noised patch pixels (Eq. 9)."""
    return (torch.abs(prediction - x0) * mask).sum() / mask.sum().clamp(min=1.0)


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
    masks = torch.from_numpy(patch_masks(random_corners(n, patch, generator).numpy(), patch)).to(x0.device, x0.dtype)
    x_tilde = noised_input(x0, diffusion.q_sample(x0, t, noise), masks)
    return patch_l1(model(x_tilde, t, **model_kwargs(x0, masks)), x0, masks)
