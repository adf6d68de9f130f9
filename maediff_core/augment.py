"""Intensity augmentation of training slices: gamma, bias field, blur and ghosting, as the cDDPM
reference applies them (TorchIO's RandomGamma, RandomBiasField, RandomBlur and RandomGhosting with
their default ranges), so that a model meets other scanners' contrasts in training; and the fixed
contrast shifts that test whether it does (:data:`CONTRAST_SHIFTS`).

Written for batches of 2-D slices on the training device, with one parameter draw per slice from the
trainer's generator (so a resumed run draws the same augmentations); TorchIO and MONAI transform one
volume at a time on the CPU, a data-loader stage this loop does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class AugmentConfig:
    gamma_p: float = 0.5  # cDDPM reference (aug_intensity): RandomGamma(p=0.5)
    log_gamma: float = 0.3  # TorchIO RandomGamma default: log(gamma) in (-0.3, 0.3)
    bias_p: float = 0.25  # RandomBiasField(p=0.25)
    bias_coefficient: float = 0.5  # TorchIO default: coefficients in (-0.5, 0.5)
    bias_order: int = 3  # TorchIO default
    blur_p: float = 0.25  # RandomBlur(p=0.25)
    blur_std_mm: float = 2.0  # TorchIO default: std in (0, 2) mm per axis
    ghost_p: float = 0.5  # RandomGhosting(p=0.5)
    ghosts: tuple[int, int] = (4, 10)  # TorchIO default number of ghosts
    ghost_intensity: tuple[float, float] = (0.5, 1.0)  # TorchIO default
    ghost_restore: float = 0.02  # TorchIO default: central fraction of k-space kept

    def __post_init__(self) -> None:
        if not all(0.0 <= p <= 1.0 for p in (self.gamma_p, self.bias_p, self.blur_p, self.ghost_p)):
            raise ValueError("augmentation probabilities must lie in 0..1")
        if min(self.log_gamma, self.bias_coefficient, self.blur_std_mm, self.ghost_restore) < 0 or self.bias_order < 0:
            raise ValueError("augmentation ranges must be >= 0")
        if not 1 <= self.ghosts[0] <= self.ghosts[1] or not 0 <= self.ghost_intensity[0] <= self.ghost_intensity[1]:
            raise ValueError(f"need 1 <= ghosts and rising ranges, got {self.ghosts}, {self.ghost_intensity}")


def gamma(x: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """x ** gamma per slice (x >= 0)."""
    return x.clamp(min=0) ** gammas.view(-1, 1, 1, 1)


def monomials(side_y: int, side_x: int, order: int, device: torch.device) -> torch.Tensor:
    """(M, H, W): y^i x^j for i + j <= order on coordinates spanning -1..1, TorchIO's basis."""
    ys = torch.linspace(-1, 1, side_y, device=device).view(-1, 1)
    xs = torch.linspace(-1, 1, side_x, device=device).view(1, -1)
    return torch.stack([ys ** i * xs ** j for i in range(order + 1) for j in range(order + 1 - i)])


def bias_field(x: torch.Tensor, coefficients: torch.Tensor, order: int) -> torch.Tensor:
    """x * exp(sum_k c_k m_k): a smooth multiplicative field; ``coefficients`` is (B, M), one per
    monomial of :func:`monomials`."""
    basis = monomials(x.shape[-2], x.shape[-1], order, x.device)
    if coefficients.shape[1] != len(basis):
        raise ValueError(f"order {order} has {len(basis)} monomials, got {coefficients.shape[1]} coefficients")
    return x * torch.exp(torch.einsum("bm,mhw->bhw", coefficients, basis)).unsqueeze(1)


def blur(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a (B, 2) std in pixels (y, x) per slice; zero padding, as the
    brain sits on a zero background."""
    n = x.shape[0]
    radius = max(1, math.ceil(3 * float(std.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-0.5 * (offsets / std.to(x.dtype).clamp(min=1e-3).unsqueeze(-1)) ** 2)  # (B, 2, K)
    kernels = kernels / kernels.sum(-1, keepdim=True)
    out = x.reshape(1, n, *x.shape[-2:])  # slices as channels: one grouped convolution blurs each its own way
    out = nn.functional.conv2d(out, kernels[:, 0].view(n, 1, -1, 1), padding=(radius, 0), groups=n)
    out = nn.functional.conv2d(out, kernels[:, 1].view(n, 1, 1, -1), padding=(0, radius), groups=n)
    return out.reshape(x.shape)


def ghosting(x: torch.Tensor, ghosts: torch.Tensor, axes: torch.Tensor, intensity: torch.Tensor,
             restore: float) -> torch.Tensor:
    """Motion ghosts: every ``ghosts``-th k-space line along ``axes`` (-2: y, -1: x) scaled by
    1 - intensity, the central ``restore`` fraction of the lines left as they were (TorchIO's model)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    out = []
    for k in range(len(x)):
        axis, n = int(axes[k]), int(ghosts[k])
        size = x.shape[axis]
        scale = torch.ones(size, device=x.device)
        scale[::n] = 1 - float(intensity[k])
        centre, keep = size // 2, int(size * restore / 2)
        scale[centre - keep:centre + keep + 1] = 1.0
        shape = [1, 1, 1]
        shape[axis] = size
        out.append(spectrum[k] * scale.view(shape))
    return torch.fft.ifft2(torch.fft.ifftshift(torch.stack(out), dim=(-2, -1))).real


def augment(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig(),
            spacing_mm: float = 2.0) -> torch.Tensor:
    """Each transform applied to each slice of ``x`` (B, 1, H, W, intensities in 0..1) with its
    probability, in the reference's order; the result is clipped to 0..1, the model's input range."""
    n = x.shape[0]

    def chosen(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).to(x.device)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, *shape, generator=generator)).to(x.device, x.dtype)

    # Every parameter is drawn whether or not it is used: the generator advances by the same amount
    # on every batch.
    use, gammas = chosen(config.gamma_p), torch.exp(uniform(-config.log_gamma, config.log_gamma))
    x = torch.where(use.view(-1, 1, 1, 1), gamma(x, gammas), x)
    terms = (config.bias_order + 1) * (config.bias_order + 2) // 2
    use, coefficients = chosen(config.bias_p), uniform(-config.bias_coefficient, config.bias_coefficient, terms)
    x = torch.where(use.view(-1, 1, 1, 1), bias_field(x, coefficients, config.bias_order), x)
    use, std = chosen(config.blur_p), uniform(0.0, config.blur_std_mm / spacing_mm, 2)
    x = torch.where(use.view(-1, 1, 1, 1), blur(x, std), x)
    use = chosen(config.ghost_p)
    ghosts = torch.randint(config.ghosts[0], config.ghosts[1] + 1, (n,), generator=generator)
    axes = torch.randint(-2, 0, (n,), generator=generator)
    intensity = uniform(*config.ghost_intensity)
    if use.any():
        picked = use.nonzero().squeeze(1)
        x = x.clone()
        chosen = picked.cpu()
        x[picked] = ghosting(x[picked], ghosts[chosen], axes[chosen], intensity[picked], config.ghost_restore)
    return x.clamp(0.0, 1.0)


@dataclass(frozen=True)
class ContrastShift:
    """Another scanner's T2 contrast for a whole volume: a gamma on the 0..1 intensities and a fixed
    in-plane bias field (the same on every slice)."""
    gamma: float = 1.0
    bias: tuple[float, ...] = ()  # coefficients of :func:`monomials` up to order 3 (10); () for none

    def apply(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The shifted copy of ``image`` (z, y, x) in 0..1, clipped, background kept at its value."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(1)
        x = gamma(x, torch.full((len(x),), self.gamma))
        if self.bias:
            x = bias_field(x, torch.tensor([self.bias] * len(x), dtype=torch.float32), order=3)
        shifted = x.squeeze(1).clamp(0.0, 1.0).numpy()
        return np.where(mask, shifted, image).astype(image.dtype)

    def cases(self, cases: list) -> list:
        """Copies of prepared cases (``cache.PreparedCase``) with their images shifted."""
        return [replace(case, image=self.apply(case.image, case.mask)) for case in cases]


# The cDDPM paper's domain question on our phantoms: gamma 0.7 brightens grey and white matter towards
# CSF, 1.4 darkens them; the bias field is a draw at TorchIO's largest default coefficients (+-0.5).
CONTRAST_SHIFTS = {
    "gamma-0.7": ContrastShift(gamma=0.7),
    "gamma-1.4": ContrastShift(gamma=1.4),
    "bias-field": ContrastShift(bias=(0.0, 0.3, -0.4, 0.1, 0.2, -0.3, 0.4, -0.2, 0.5, -0.1)),
}


def contrast_named(name: str) -> ContrastShift:
    if name not in CONTRAST_SHIFTS:
        raise ValueError(f"unknown contrast {name!r}: choose {', '.join(CONTRAST_SHIFTS)}")
    return CONTRAST_SHIFTS[name]
