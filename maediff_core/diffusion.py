"""Forward diffusion, the hierarchical patch partition, and the x0-prediction objective.

MAEDiff never runs a sampling chain: training predicts x0 from a partly noised slice, and detection
makes one x0 prediction per patch position at a fixed t_test (paper Sec. 3.1, Algorithm 2). cDDPM
does the same at several noise levels and averages the predictions (its ensemble of t_test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .noise import make_noise


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000  # paper Sec. 4.3: T = 1000
    schedule: str = "linear"  # paper Sec. 4.3 (the pDDPM code defaults to cosine)
    beta_start: float = 1e-4  # paper Sec. 4.3
    beta_end: float = 2e-2  # paper Sec. 4.3
    noise: str = "simplex"  # paper Sec. 4.3; 'gaussian' as an option
    t_test: tuple[int, ...] = (500,)  # paper Sec. 4.3; several levels: an ensemble of their predictions

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine") or self.noise not in ("simplex", "gaussian"):
            raise ValueError(f"schedule must be linear|cosine and noise simplex|gaussian, "
                             f"got {self.schedule!r}, {self.noise!r}")
        check_levels(self.t_test, self.timesteps)
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")


def check_levels(levels: tuple[int, ...], timesteps: int) -> None:
    """A t_test ensemble: one or more distinct noise levels in 1..timesteps."""
    if timesteps < 1 or not levels or not all(1 <= t <= timesteps for t in levels):
        raise ValueError(f"t-test must be one or more levels in 1..{timesteps}, got {levels_text(levels)}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"t-test levels must differ, got {levels_text(levels)}")


def levels_text(levels: tuple[int, ...]) -> str:
    """``250,500,750``: how a t_test ensemble is written on the command line and in reports."""
    return ",".join(str(t) for t in levels)


def alphas_cumprod(config: DiffusionConfig) -> torch.Tensor:
    """Products of (1 - beta) for t = 1..T (index t - 1), in float64."""
    if config.schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)
    if config.schedule == "cosine":  # Nichol & Dhariwal 2021, offset s = 0.008
        steps = torch.arange(config.timesteps + 1, dtype=torch.float64) / config.timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=0.999)
        return torch.cumprod(1.0 - betas, 0)
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {config.schedule!r}")


class Diffusion:
    """q(x_t | x_0) with simplex or Gaussian noise."""

    def __init__(self, config: DiffusionConfig = DiffusionConfig()):
        self.config = config
        self.alpha_bar = alphas_cumprod(config)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for t in 1..T (one per sample)."""
        abar = self.alpha_bar.to(x0.device)[t - 1].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def noise_like(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return make_noise(self.config.noise, tuple(x0.shape), generator, device=x0.device).to(x0.dtype)

    def sample_t(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """t ~ Uniform{1..T} (Algorithm 1)."""
        return torch.randint(1, self.config.timesteps + 1, (n,), generator=generator)


@dataclass(frozen=True)
class PatchConfig:
    size: int = 96  # model input is a 96 x 96 slice (docs/reference.md)
    patch: int = 48  # paper Sec. 4.3: p = 48
    stride: int = 16  # paper Sec. 4.3: s = 16 (pDDPM s48 uses 48)
    grid: int = 16  # paper Sec. 4.3: r = 16
    whole_slice: bool = False  # AnoDDPM: the whole slice is noised

    def __post_init__(self) -> None:
        if min(self.size, self.stride, self.grid) < 1 or not 1 <= self.patch <= self.size:
            raise ValueError(f"need positive size, stride, grid and 1 <= patch <= size, got {self}")

    def positions(self, stride: int | None = None) -> list[tuple[int, int]]:
        """Top-left corners of the upper-level patches: K = ((96 - 48 + s) / s)^2."""
        if self.whole_slice:
            return [(0, 0)]
        stride = stride or self.stride
        if (self.size - self.patch) % stride:
            raise ValueError(f"stride {stride} does not tile {self.size} with patches of {self.patch}")
        starts = range(0, self.size - self.patch + 1, stride)
        return [(y, x) for y in starts for x in starts]

    @property
    def patch_extent(self) -> int:
        return self.size if self.whole_slice else self.patch


def patch_masks(corners: torch.Tensor, config: PatchConfig) -> torch.Tensor:
    """(B, 1, H, W) float masks, 1 inside the patch whose top-left corner is ``corners[b]``."""
    size, extent = config.size, config.patch_extent
    coords = torch.arange(size, device=corners.device)
    rows = (coords[None] >= corners[:, :1]) & (coords[None] < corners[:, :1] + extent)
    cols = (coords[None] >= corners[:, 1:]) & (coords[None] < corners[:, 1:] + extent)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1).float()


def random_corners(n: int, config: PatchConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One training patch per sample, on the grid-aligned positions (s divisible by r, Sec. 3.2)."""
    options = torch.tensor(config.positions(config.grid), dtype=torch.long)
    return options[torch.randint(len(options), (n,), generator=generator)]


def noised_input(x0: torch.Tensor, xt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x~_t = x_t inside the patch, x_0 outside (Eq. 8)."""
    return xt * mask + x0 * (1 - mask)


def patch_l1(prediction: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |x0 - prediction| over the noised patch pixels (Eq. 9)."""
    return (torch.abs(prediction - x0) * mask).sum() / mask.sum().clamp(min=1.0)
