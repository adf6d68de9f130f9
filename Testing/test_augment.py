"""Intensity augmentation: each transform does what its model says, the batch version draws
reproducibly from the trainer's generator, and the evaluation's contrast shifts touch the brain only."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from maediff_core.augment import (
    CONTRAST_SHIFTS,
    AugmentConfig,
    ContrastShift,
    augment,
    bias_field,
    blur,
    gamma,
    ghosting,
    monomials,
)


def slices(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 32, 40, generator=torch.Generator().manual_seed(seed))


def test_gamma_is_a_power():
    x = slices()
    torch.testing.assert_close(gamma(x, torch.tensor([0.7, 1.0, 1.4, 2.0])),
                               torch.stack([x[0] ** 0.7, x[1], x[2] ** 1.4, x[3] ** 2.0]))


def test_bias_field_is_the_exponential_of_a_polynomial():
    x = slices(2)
    basis = monomials(32, 40, 3, x.device)
    assert len(basis) == 10 and torch.all(basis[0] == 1)  # 1, x, x^2, x^3, y, xy, ...
    coefficients = torch.zeros(2, 10)
    torch.testing.assert_close(bias_field(x, coefficients, 3), x)
    coefficients[0, 0], coefficients[1, 1] = 0.3, 0.5  # a constant gain; a ramp along x
    out = bias_field(x, coefficients, 3)
    torch.testing.assert_close(out[0], x[0] * torch.exp(torch.tensor(0.3)))
    ramp = torch.exp(0.5 * torch.linspace(-1, 1, 40))
    torch.testing.assert_close(out[1, 0], x[1, 0] * ramp)
    with pytest.raises(ValueError, match="order 3 has 10 monomials, got 6"):
        bias_field(x, torch.zeros(2, 6), 3)


def test_blur_spreads_a_point_by_its_standard_deviation_and_keeps_its_mass():
    x = torch.zeros(2, 1, 41, 41)
    x[:, 0, 20, 20] = 1.0
    std = torch.tensor([[1.5, 3.0], [2.0, 1.0]])  # a sampled Gaussian narrower than 1 pixel is narrower still
    out = blur(x, std)
    offsets = torch.arange(41.0) - 20
    for k in range(2):
        assert float(out[k].sum()) == pytest.approx(1.0, abs=1e-5)
        rows, cols = out[k, 0].sum(1), out[k, 0].sum(0)
        assert float((rows * offsets ** 2).sum()) ** 0.5 == pytest.approx(float(std[k, 0]), rel=0.03)
        assert float((cols * offsets ** 2).sum()) ** 0.5 == pytest.approx(float(std[k, 1]), rel=0.03)
    torch.testing.assert_close(blur(slices(2), torch.zeros(2, 2)), slices(2))  # no width: no blur


@pytest.mark.parametrize("axis", [-2, -1])
def test_ghosting_scales_every_nth_k_space_line_and_keeps_the_centre(axis):
    x = slices(1)
    out = ghosting(x, torch.tensor([4]), torch.tensor([axis]), torch.tensor([0.75]), restore=0.02)
    before, after = (torch.fft.fftshift(torch.fft.fft2(v), dim=(-2, -1))[0, 0] for v in (x, out))
    ratio = (after.abs() / before.abs()).movedim(axis, 0)  # lines along the ghosting axis first
    size = x.shape[axis]
    for line in range(size):
        expected = 0.25 if line % 4 == 0 and line != size // 2 else 1.0
        torch.testing.assert_close(ratio[line], torch.full_like(ratio[line], expected), atol=1e-4, rtol=1e-4)
    assert float(out.mean()) == pytest.approx(float(x.mean()), abs=1e-6)  # the centre line holds the mean


def test_augment_draws_reproducibly_and_keeps_the_model_range():
    x = slices(16)
    never = AugmentConfig(gamma_p=0, bias_p=0, blur_p=0, ghost_p=0)
    always = replace(never, gamma_p=1, bias_p=1, blur_p=1, ghost_p=1)
    states = []
    for config in (never, always):
        generator = torch.Generator().manual_seed(3)
        out = augment(x, generator, config)
        states.append(generator.get_state())
        assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(3), never), x)
    assert bool((augment(x, torch.Generator().manual_seed(3), always) - x).abs().amax((1, 2, 3)).gt(1e-3).all())
    # The same draws whatever is applied: a resumed run's generator stays in step.
    assert torch.equal(states[0], states[1])
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(5)),
                               augment(x, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="probabilities"):
        AugmentConfig(gamma_p=1.5)


def test_contrast_shifts_change_the_brain_only_and_leave_the_input_alone():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (3, 96, 96)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[:, 20:70, 20:70] = True
    before = image.copy()
    darker = ContrastShift(gamma=1.4).apply(image, mask)
    np.testing.assert_array_equal(image, before)
    np.testing.assert_allclose(darker[mask], before[mask] ** 1.4, rtol=1e-5)
    np.testing.assert_array_equal(darker[~mask], before[~mask])
    biased = CONTRAST_SHIFTS["bias-field"].apply(image, mask)
    ratio = biased[mask] / np.maximum(before[mask], 1e-6)
    assert biased.dtype == image.dtype and 0 <= biased.min() and biased.max() <= 1
    assert ratio[before[mask] > 0.1].std() > 0.05  # a field that varies across the slice, not a constant factor
    assert set(CONTRAST_SHIFTS) == {"gamma-0.7", "gamma-1.4", "bias-field"}
