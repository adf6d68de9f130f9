"""The simplex noise, torch's and numpy's, against opensimplex, the reference's generator."""

import numpy as np
import opensimplex
import pytest
import torch

from maediff_core.diffusion import make_noise, simplex_noise
from maediff_core.noise import SimplexConfig, numpy_noise

SIZE = 96


def opensimplex_fractal(seed: int, config: SimplexConfig = SimplexConfig()) -> np.ndarray:
    """The reference fractal: octaves of opensimplex noise2, frequency doubling, amplitude x 0.8."""
    opensimplex.seed(seed)
    coords = np.arange(SIZE, dtype=float)
    out, amplitude, frequency = np.zeros((SIZE, SIZE)), 1.0, config.frequency
    for _ in range(config.octaves):
        out += amplitude * opensimplex.noise2array(coords * frequency + 31.7 * seed, coords * frequency)
        amplitude *= config.persistence
        frequency *= 2
    return out


def radial_power(fields: np.ndarray) -> np.ndarray:
    """Mean power in 8 radial frequency bands of the 2-D spectrum, normalised to sum 1."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(fields - fields.mean((1, 2), keepdims=True)), axes=(1, 2))) ** 2
    ky, kx = np.meshgrid(np.arange(SIZE) - SIZE // 2, np.arange(SIZE) - SIZE // 2, indexing="ij")
    radius = np.hypot(ky, kx)
    bands = np.linspace(0, SIZE // 2, 9)
    values = np.array([power[:, (radius >= a) & (radius < b)].mean()
                       for a, b in zip(bands[:-1], bands[1:], strict=True)])
    return values / values.sum()


@pytest.fixture(scope="module")
def fields():
    ours = simplex_noise((64, 1, SIZE, SIZE), torch.Generator().manual_seed(0))[:, 0].numpy()
    reference = np.stack([opensimplex_fractal(seed) for seed in range(64)])
    return ours, reference


@pytest.fixture(scope="module")
def numpy_fields():
    """Detection's noise on both runtimes: the same arithmetic, numpy's generator."""
    return numpy_noise("simplex", (64, 1, SIZE, SIZE), 0)[:, 0]


@pytest.mark.parametrize("runtime", ["torch", "numpy"])
def test_mean_and_spread_match_opensimplex(fields, numpy_fields, runtime):
    ours, reference = fields
    ours = numpy_fields if runtime == "numpy" else ours
    assert abs(ours.mean()) < 0.08 and abs(reference.mean()) < 0.08
    assert ours.std() == pytest.approx(reference.std(), rel=0.1)
    # Extremes over 64 fields agree within 25 % (they are tails, hence the looser bound).
    assert np.abs(ours).max() == pytest.approx(np.abs(reference).max(), rel=0.25)
    np.testing.assert_allclose(radial_power(ours), radial_power(reference), atol=0.04)


@pytest.mark.parametrize("octave", range(6))
def test_each_octave_has_the_reference_range(octave):
    config = SimplexConfig()
    one = SimplexConfig(octaves=1, frequency=config.frequency * 2**octave)
    ours = simplex_noise((32, 1, SIZE, SIZE), torch.Generator().manual_seed(octave), one)[:, 0].numpy()
    reference = np.stack([opensimplex_fractal(s, one) for s in range(32)])
    assert ours.std() == pytest.approx(reference.std(), rel=0.15)
    assert ours.max() <= 1.0 and ours.min() >= -1.0 and reference.max() <= 1.0


def test_independent_per_sample_and_reproducible():
    a = simplex_noise((4, 1, SIZE, SIZE), torch.Generator().manual_seed(3))
    b = simplex_noise((4, 1, SIZE, SIZE), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    flat = a.flatten(1)
    correlation = torch.corrcoef(flat)
    off_diagonal = correlation[~torch.eye(4, dtype=bool)]
    assert off_diagonal.abs().max() < 0.5  # fields are not copies of one another


def test_gaussian_option_and_unknown_kind():
    g = torch.Generator().manual_seed(0)
    noise = make_noise("gaussian", (8, 1, 32, 32), g)
    assert abs(noise.std().item() - 1) < 0.05
    with pytest.raises(ValueError, match="simplex' or 'gaussian"):
        make_noise("perlin", (1, 1, 8, 8), g)
    assert abs(numpy_noise("gaussian", (8, 1, 32, 32), 0).std() - 1) < 0.05
    np.testing.assert_array_equal(numpy_noise("simplex", (2, 1, 16, 16), 4), numpy_noise("simplex", (2, 1, 16, 16), 4))
    with pytest.raises(ValueError, match="simplex' or 'gaussian"):
        numpy_noise("perlin", (1, 1, 8, 8), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_cuda_matches_cpu():
    cpu = simplex_noise((4, 1, SIZE, SIZE), torch.Generator().manual_seed(1))
    gpu = simplex_noise((4, 1, SIZE, SIZE), torch.Generator().manual_seed(1), device="cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
