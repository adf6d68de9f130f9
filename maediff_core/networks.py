"""The generator every image-space method shares: a guided-diffusion-style U-Net (MONAI's
DiffusionModelUNet) predicting x0, with two places where a method adds its own part: the embedding
(cDDPM joins a condition to the time embedding) and the feature map before the bottleneck (MAEDiff
adds its masked-autoencoder module's output). Method-specific inputs reach them as keyword
arguments of the forward pass (guided-diffusion's ``model_kwargs``).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from .diffusion_config import UNetConfig


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

