"""The generator every image-space method shares: a guided-diffusion-style U-Net (MONAI's
DiffusionModelUNet) predicting x0, with two places where a method adds its own part: the embedding
(cDDPM joins a condition to the time embedding) and the feature map before the bottleneck (MAEDiff
adds its masked-autoencoder module's output). Method-specific inputs reach them as keyword
arguments of the forward pass (guided-diffusion's ``model_kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn


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


class DiffusionNet(nn.Module):
    """x0-predicting U-Net: (x_t, t, **model_kwargs) -> x0. Without a method's part it is the pDDPM /
    AnoDDPM network; subclasses override :meth:`embedding` or :meth:`bottleneck_input`.

    The forward pass is MONAI's DiffusionModelUNet.forward with those two steps made overridable.
    """

    def __init__(self, unet: UNetConfig):
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1, out_channels=1, channels=unet.channels,
            attention_levels=unet.attention, num_res_blocks=unet.res_blocks,
            num_head_channels=unet.head_channels, norm_num_groups=unet.norm_groups, resblock_updown=True,
        )

    def feature_side(self, size: int) -> int:
        """Side of the feature map that enters the middle block, for ``size`` x ``size`` slices."""
        return size // 2 ** (len(self.unet.block_out_channels) - 1)

    def embedding(self, t: torch.Tensor, dtype: torch.dtype, model_kwargs: dict) -> torch.Tensor:
        net = self.unet
        return net.time_embed(get_timestep_embedding(t, net.block_out_channels[0]).to(dtype))

    def bottleneck_input(self, h: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """Each overridable step takes from ``model_kwargs`` what its method passes it."""
        net = self.unet
        emb = self.embedding(t, x.dtype, model_kwargs)
        h = net.conv_in(x)
        skips = [h]
        for block in net.down_blocks:
            h, residuals = block(hidden_states=h, temb=emb, context=None)
            skips.extend(residuals)
        h = net.middle_block(hidden_states=self.bottleneck_input(h, model_kwargs), temb=emb, context=None)
        for block in net.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=None)
            skips = skips[:-n]
        return net.out(h)

