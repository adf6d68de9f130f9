"""2-D fractal simplex noise: one independent field per sample, the same arithmetic on numpy arrays
and on torch tensors (CPU or CUDA).

The reference draws one fractal simplex field per call on the CPU (numba) and shares it across the
batch. Here every sample gets its own lattice permutation and offset, so slices are noised
independently. Training draws them with torch on the model's device (diffusion.py), so noise never
stalls the accelerator; detection draws a volume's fields once with numpy on every runtime
(runtime.py, patch_diffusion.py), so a seed finds the same lesions whether torch or ONNX Runtime runs.
The fractal follows the reference: 6 octaves, base frequency 2^-6 per pixel doubling per octave,
amplitudes multiplied by 0.8 per octave, no rescaling (docs/reference.md, "Diffusion").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_F2 = 0.5 * (3.0**0.5 - 1.0)  # skew to the simplex lattice
_G2 = (3.0 - 3.0**0.5) / 6.0  # and back
# 12 gradient directions of classic simplex noise (the 2-D parts of the cube-edge gradients).
GRADIENTS = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0],
                      [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=np.float32)
# Output scale chosen so that one octave has the standard deviation of opensimplex's noise2 (0.365,
# measured over many seeds; Gustavson's 70 gives 0.44), the generator of the reference's statistics.
_SCALE = 58.2


@dataclass(frozen=True)
class SimplexConfig:
    octaves: int = 6  # docs/reference.md / paper Algorithm 1: N = 6
    persistence: float = 0.8  # gamma = 0.8
    frequency: float = 2.0**-6  # nu = 2^-6 cycles per pixel


def _index(values):
    """Integral floats as indices: the one operation numpy and torch spell differently."""
    return values.long() if hasattr(values, "long") else values.astype(np.int64)


def simplex2d(x, y, perm, rows, gradients):
    """Classic 2-D simplex noise at points (B, N) with a permutation table per sample (B, 512, read
    flat from ``rows`` = b * 512) and ``gradients`` (GRADIENTS's x and y columns, flat)."""
    s = (x + y) * _F2
    i, j = (x + s) // 1, (y + s) // 1  # floor
    t = (i + j) * _G2
    x0, y0 = x - (i - t), y - (j - t)
    upper = (x0 > y0) * 1.0  # which of the two triangles of the skewed cell
    corners = [(x0, y0, 0, 0), (x0 - upper + _G2, y0 - (1 - upper) + _G2, upper, 1 - upper),
               (x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2, 1, 1)]
    ii, jj = i % 256, j % 256
    total = 0.0
    for cx, cy, di, dj in corners:
        inner = perm.take(rows + _index((jj + dj) % 512))
        hashed = perm.take(rows + _index((ii + di + inner) % 512)) % 12
        falloff = 0.5 - cx * cx - cy * cy
        falloff = falloff * (falloff > 0)
        total = total + falloff**4 * (gradients.take(2 * hashed) * cx + gradients.take(2 * hashed + 1) * cy)
    return _SCALE * total


def fractal(xs, ys, offset, perm, rows, gradients, config: SimplexConfig):
    """The octaves summed at pixel coordinates ``xs``, ``ys`` (1, N), each field shifted by its
    ``offset`` (B, 2)."""
    noise, amplitude, frequency = 0.0, 1.0, config.frequency
    for _ in range(config.octaves):
        noise = noise + amplitude * simplex2d(xs * frequency + offset[:, :1], ys * frequency + offset[:, 1:], perm,
                                              rows, gradients)
        amplitude *= config.persistence
        frequency *= 2.0
    return noise


def numpy_noise(kind: str, shape: tuple[int, ...], seed: int, config: SimplexConfig = SimplexConfig()) -> np.ndarray:
    """Diffusion noise of ``shape`` (B, C, H, W) in float32 from numpy's generator seeded ``seed``:
    'simplex' (a field per sample and channel) or 'gaussian'."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal(shape, dtype=np.float32)
    if kind != "simplex":
        raise ValueError(f"noise must be 'simplex' or 'gaussian', got {kind!r}")
    b, c, h, w = shape
    n = b * c
    perm = np.argsort(rng.random((n, 256)), axis=1)
    perm = np.concatenate([perm, perm], 1)
    offset = rng.random((n, 2)) * 256  # otherwise every field would be zero at the origin
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    rows = np.arange(n)[:, None] * 512
    field = fractal(xs.reshape(1, -1), ys.reshape(1, -1), offset, perm, rows, GRADIENTS.astype(np.float64), config)
    return field.reshape(b, c, h, w).astype(np.float32)
