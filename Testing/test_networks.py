"""Diffusion pieces, patch geometry and the MAE-enhanced U-Net."""

import numpy as np
import pytest
import torch

from maediff_core.diffusion import Diffusion, patch_l1, random_corners
from maediff_core.diffusion_config import (
    DiffusionConfig,
    PatchConfig,
    UNetConfig,
    alphas_cumprod,
    noised_input,
    patch_masks,
)
from maediff_core.methods import get_config, named_configs
from maediff_core.methods.patch import visible_cells
from maediff_core.methods.patch.config import MAEConfig
from maediff_core.methods.patch.mae import MAEDiffNet


def masks_of(corners: list, patch: PatchConfig) -> torch.Tensor:
    return torch.from_numpy(patch_masks(np.array(corners), patch))


TINY_UNET = UNetConfig(channels=(32, 32, 32), res_blocks=1, head_channels=32)
TINY_MAE = MAEConfig(encoder_depth=2, encoder_width=64, encoder_heads=2, decoder_depth=2, decoder_width=64,
                     decoder_heads=2)


def test_schedules():
    linear = alphas_cumprod(DiffusionConfig())
    assert linear.shape == (1000,)
    assert linear[0] == pytest.approx(1 - 1e-4)
    assert 0 < linear[-1] < 1e-4 and bool((linear[1:] < linear[:-1]).all())
    cosine = alphas_cumprod(DiffusionConfig(schedule="cosine"))
    assert cosine[499] > linear[499]  # cosine destroys information more slowly mid-way
    with pytest.raises(ValueError, match="schedule"):
        alphas_cumprod(DiffusionConfig(schedule="quadratic"))


def test_q_sample_mixes_signal_and_noise():
    diffusion = Diffusion(DiffusionConfig(noise="gaussian"))
    x0 = torch.ones(2, 1, 8, 8)
    noise = torch.zeros_like(x0)
    xt = diffusion.q_sample(x0, torch.tensor([1, 1000]), noise)
    assert xt[0].mean().item() == pytest.approx(diffusion.alpha_bar[0].sqrt().item(), abs=1e-6)
    assert xt[1].abs().max().item() < 0.01


def test_patch_positions_and_masks():
    assert len(PatchConfig().positions()) == 16  # K = ((96 - 48 + 16) / 16)^2
    assert len(PatchConfig(stride=48).positions()) == 4
    assert PatchConfig(whole_slice=True).positions() == [(0, 0)]
    with pytest.raises(ValueError, match="does not tile"):
        PatchConfig(stride=20).positions()
    masks = masks_of([[0, 16], [48, 48]], PatchConfig())
    assert masks.shape == (2, 1, 96, 96) and masks.sum((1, 2, 3)).tolist() == [48 * 48, 48 * 48]
    assert masks[0, 0, 0, 16] == 1 and masks[0, 0, 0, 15] == 0 and masks[1, 0, 95, 95] == 1
    whole = masks_of([[0, 0]], PatchConfig(whole_slice=True))
    assert whole.sum() == 96 * 96
    corners = random_corners(500, PatchConfig(), torch.Generator().manual_seed(0))
    assert set((corners % 16 == 0).flatten().tolist()) == {True}  # grid-aligned (s divisible by r)
    assert len({tuple(c) for c in corners.tolist()}) == 16


def test_noised_input_and_loss_only_inside_the_patch():
    x0, xt = torch.zeros(1, 1, 96, 96), torch.ones(1, 1, 96, 96)
    mask = masks_of([[16, 32]], PatchConfig())
    mixed = noised_input(x0, xt, mask)
    assert mixed.sum() == 48 * 48
    prediction = torch.full_like(x0, 5.0) * (1 - mask) + 0.5 * mask  # wrong outside, 0.5 off inside
    assert patch_l1(prediction, x0, mask).item() == pytest.approx(0.5)


def test_visible_cells_count():
    mask = masks_of([[16, 32], [0, 0]], PatchConfig())
    visible = visible_cells(mask, 16)
    assert visible.shape == (2, 36) and visible.sum(1).tolist() == [27, 27]
    assert not visible[1, 0] and visible[1, 3] and not visible[1, 14] and visible[1, 15]
    np.testing.assert_array_equal(visible_cells(mask.numpy(), 16), visible.numpy())  # detection's numpy masks


def test_the_mae_output_is_added_to_the_encoder_features_before_the_bottleneck():
    torch.manual_seed(0)
    net = MAEDiffNet(TINY_UNET, TINY_MAE)
    torch.nn.init.normal_(net.mae.upsample[-1].weight, std=0.05)  # it starts at zero: a no-op
    x = torch.randn(3, 1, 96, 96)
    mask = masks_of([[0, 0], [16, 16], [48, 32]], PatchConfig())
    seen = {}
    net.unet.down_blocks[-1].register_forward_hook(lambda m, inputs, out: seen.update(encoder=out[0]))
    net.mae.register_forward_hook(lambda m, inputs, out: seen.update(mae=out))
    net.unet.middle_block.register_forward_pre_hook(lambda m, args, kwargs: seen.update(middle=kwargs["hidden_states"]),
                                                    with_kwargs=True)
    out = net(x, torch.tensor([1, 500, 1000]), visible=visible_cells(mask, 16))
    assert out.shape == x.shape and seen["encoder"].shape == (3, 32, 24, 24) and seen["mae"].abs().max() > 0
    torch.testing.assert_close(seen["middle"], seen["encoder"] + seen["mae"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="visible grid cells"):
        net(x, torch.tensor([1, 2, 3]))


def test_masked_tokens_never_enter_the_encoder():
    torch.manual_seed(0)
    net = MAEDiffNet(TINY_UNET, TINY_MAE)
    seen = []
    net.mae.encoder[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape))
    mask = masks_of([[16, 16]], PatchConfig())
    net(torch.randn(1, 1, 96, 96), torch.tensor([500]), visible=visible_cells(mask, 16))
    assert seen == [torch.Size([1, 27, 64])]  # 36 cells - 9 masked

    # The encoder's input must not change when only masked cells of the feature map change.
    feature = torch.randn(1, 32, 24, 24)
    visible = visible_cells(mask, 16)
    captured = []
    hook = net.mae.encoder[0].register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].clone()))
    net.mae(feature, visible)
    changed = feature.clone()
    changed[:, :, 4:16, 4:16] += 10.0  # cells (1..3, 1..3): exactly the masked ones
    net.mae(changed, visible)
    hook.remove()
    torch.testing.assert_close(captured[0], captured[1])


def test_patch_prediction_depends_on_the_visible_region():
    torch.manual_seed(0)
    net = MAEDiffNet(TINY_UNET, TINY_MAE)
    # Leave the zero-initialised starts (MONAI's output convolution, the MAE's last layer).
    for p in list(net.mae.upsample[-1].parameters()) + list(net.unet.out.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    mask = masks_of([[48, 48]], PatchConfig())
    visible = visible_cells(mask, 16)
    x = torch.randn(1, 1, 96, 96)
    far = x.clone()
    far[..., :16, :16] += 1.0  # a visible corner far from the patch
    with torch.no_grad():
        a = net(x, torch.tensor([500]), visible=visible)
        b = net(far, torch.tensor([500]), visible=visible)
    inside = mask.bool()
    assert (a - b)[inside].abs().max() > 1e-4  # global context reaches the noised patch
    # ... and through the MAE module itself: its output over the masked cells (feature rows and
    # columns 12..23) follows a change of one visible cell (rows and columns 0..3).
    feature = torch.randn(1, 32, 24, 24)
    changed = feature.clone()
    changed[:, :, :4, :4] += 1.0
    with torch.no_grad():
        delta = net.mae(changed, visible) - net.mae(feature, visible)
    assert delta[..., 12:, 12:].abs().max() > 1e-4


def test_named_configurations():
    assert {"maediff", "maediff-small", "pddpm-s48", "pddpm-s16", "anoddpm"} <= set(named_configs())
    small = get_config("maediff-small")
    assert get_config("maediff").unet.attention == (False, True, True)  # paper Table 2
    assert small.mae is not None and small.unet.attention == (False, False, True)  # CPU-sized: 24 x 24 only
    assert get_config("pddpm-s48").patch.stride == 48 and get_config("anoddpm").patch.whole_slice
    with pytest.raises(ValueError, match="unknown configuration"):
        get_config("maediff-huge")
    net = get_config("maediff").build()
    assert 30e6 < sum(p.numel() for p in net.unet.parameters()) < 45e6
    assert 50e6 < sum(p.numel() for p in net.mae.parameters()) < 65e6
