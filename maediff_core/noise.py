"""Batched 2-D simplex noise in torch: one independent field per sample, on CPU or CUDA.

The reference draws one fractal simplex field per call on the CPU (numba) and shares it across the
batch. Here every sample gets its own lattice permutation and offset, generated on the model's
device, so noise never stalls the accelerator and slices are noised independently. The fractal
follows the reference: 6 octaves, base frequency 2^-6 per pixel doubling per octave, amplitudes
multiplied by 0.8 per octave, no rescaling (docs/reference.md, "Diffusion").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_F2 = 0.5 * (3.0**0.5 - 1.0)  # skew to the simplex lattice
_G2 = (3.0 - 3.0**0.5) / 6.0  # and back
# 12 gradient directions of classic simplex noise (the 2-D parts of the cube-edge gradients).
_GRADIENTS = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0],
                           [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float32)
# Output scale chosen so that one octave has the standard deviation of opensimplex's noise2 (0.365,
# measured over many seeds; Gustavson's 70 gives 0.44), the generator of the reference's statistics.
_SCALE = 58.2


@dataclass(frozen=True)
class SimplexConfig:
    octaves: int = 6  # docs/reference.md / paper Algorithm 1: N = 6
    persistence: float = 0.8  # gamma = 0.8
    frequency: float = 2.0**-6  # nu = 2^-6 cycles per pixel


def simplex2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Classic 2-D simplex noise at points (B, N) with a per-sample permutation table (B, 512)."""
    s = (x + y) * _F2
    i, j = torch.floor(x + s), torch.floor(y + s)
    t = (i + j) * _G2
    x0, y0 = x - (i - t), y - (j - t)
    upper = (x0 > y0).to(x.dtype)  # which of the two triangles of the skewed cell
    corners = [(x0, y0, 0, 0), (x0 - upper + _G2, y0 - (1 - upper) + _G2, upper, 1 - upper),
               (x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2, 1, 1)]
    ii, jj = i.long() & 255, j.long() & 255
    gradients = _GRADIENTS.to(x.device, x.dtype)
    total = torch.zeros_like(x)
    for cx, cy, di, dj in corners:
        di = di.long() if torch.is_tensor(di) else di
        dj = dj.long() if torch.is_tensor(dj) else dj
        inner = torch.gather(perm, 1, (jj + dj) & 511)
        hashed = torch.gather(perm, 1, (ii + di + inner) & 511) % 12
        g = gradients[hashed]
        falloff = torch.clamp(0.5 - cx * cx - cy * cy, min=0.0)
        total = total + falloff**4 * (g[..., 0] * cx + g[..., 1] * cy)
    return _SCALE * total


def simplex_noise(shape: tuple[int, int, int, int], generator: torch.Generator | None = None,
                  config: SimplexConfig = SimplexConfig(), device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fractal simplex noise of ``shape`` (B, C, H, W), an independent field per sample and channel.

    Reproducible from ``generator`` (a CPU generator, so results do not depend on the device).
    """
    b, c, h, w = shape
    n = b * c
    perm = torch.argsort(torch.rand(n, 256, generator=generator), dim=1)  # a permutation per field
    perm = torch.cat([perm, perm], 1).to(device)
    # A random offset per field: otherwise every field would be zero at the origin.
    offset = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 256).to(device, dtype)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)
    noise = torch.zeros(n, h * w, device=device, dtype=dtype)
    amplitude, frequency = 1.0, config.frequency
    for _ in range(config.octaves):
        noise += amplitude * simplex2d(xs * frequency + offset[:, :1], ys * frequency + offset[:, 1:], perm)
        amplitude *= config.persistence
        frequency *= 2.0
    return noise.reshape(b, c, h, w)


def make_noise(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator | None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Diffusion noise: 'simplex' (the method's) or 'gaussian'."""
    if kind == "simplex":
        return simplex_noise(shape, generator, device=device)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator).to(device)
    raise ValueError(f"noise must be 'simplex' or 'gaussian', got {kind!r}")
