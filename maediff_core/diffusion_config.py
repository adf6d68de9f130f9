"""What every method's configuration shares, without torch: the U-Net's sizes, the forward process and
its noise schedule, the patch partition and its masks. Reading a card and detecting on ONNX Runtime
import this and never torch or MONAI (runtime.py); diffusion.py is the forward process in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (128, 256, 256)  # docs/reference.md "Networks": 128 x (1, 2, 2)
    res_blocks: int = 3  # docs/reference.md "Networks"
    attention: tuple[bool, ...] = (False, True, True)  # MAEDiff paper Table 2: global attention at 48 and 24
    head_channels: int = 64  # docs/reference.md "Networks": 64 channels per attention head
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if not self.channels or min(*self.channels, self.res_blocks, self.head_channels, self.norm_groups) < 1:
            raise ValueError("channels, res_blocks, head_channels and norm_groups must be positive")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_groups {self.norm_groups}")
        if len(self.attention) != len(self.channels):
            raise ValueError(f"attention needs one flag per level ({len(self.channels)}), got {len(self.attention)}")


# A CPU-sized U-Net that keeps every part (docs/reference.md, "Measured": 32/64/64, 2 residual blocks).
# Attention over the 48 x 48 map (2304 tokens) is half of a small net's FLOPs (15.2 -> 8.1 GFLOP for
# maediff-small): the small image-space nets keep it at 24 x 24 only.
SMALL_UNET = UNetConfig(channels=(32, 64, 64), res_blocks=2, attention=(False, False, True), head_channels=32)
NO_ATTENTION = (False, False, False)  # pDDPM, AnoDDPM, cDDPM: attention only in the middle block


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


def alphas_cumprod(config: DiffusionConfig) -> np.ndarray:
    """Products of (1 - beta) for t = 1..T (index t - 1), in float64."""
    if config.schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=np.float64)
        return np.cumprod(1.0 - betas)
    if config.schedule == "cosine":  # Nichol & Dhariwal 2021, offset s = 0.008
        steps = np.arange(config.timesteps + 1, dtype=np.float64) / config.timesteps
        f = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
        return np.cumprod(1.0 - betas)
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {config.schedule!r}")


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


def patch_masks(corners: np.ndarray, config: PatchConfig) -> np.ndarray:
    """(B, 1, H, W) float32 masks, 1 inside the patch whose top-left corner is ``corners[b]`` (B, 2)."""
    size, extent = config.size, config.patch_extent
    coords = np.arange(size)[None]
    rows = (coords >= corners[:, :1]) & (coords < corners[:, :1] + extent)
    cols = (coords >= corners[:, 1:]) & (coords < corners[:, 1:] + extent)
    return (rows[:, :, None] & cols[:, None, :])[:, None].astype(np.float32)


def q_sample(alpha_bar: np.ndarray, x0: np.ndarray, t: int, noise: np.ndarray) -> np.ndarray:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise at one level t in 1..T, in x0's precision."""
    abar = alpha_bar[t - 1].astype(x0.dtype)
    return np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise


def noised_input(x0, xt, mask):
    """x~_t = x_t inside the patch, x_0 outside (Eq. 8); numpy arrays or torch tensors alike."""
    return xt * mask + x0 * (1 - mask)
