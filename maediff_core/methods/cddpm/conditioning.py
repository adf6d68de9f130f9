"""cDDPM's conditioning (arXiv 2312.04215): an encoder of the noise-free input slice whose vector joins
the time embedding, and residual blocks that turn that embedding into a per-channel scale and shift
of their normalised features (FiLM; guided-diffusion's ``use_scale_shift_norm``).

MONAI's DiffusionModelUNet adds its embedding to the features and has no scale-shift option, so the
residual block here takes over a MONAI block's layers (and their weight names) and changes only how
the embedding enters.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn

from ...diffusion_config import UNetConfig
from ...networks import DiffusionNet
from .config import EncoderConfig


def resnet_of(config: EncoderConfig) -> ResNet:
    """The encoder's one-channel 2-D ResNet: a 7 x 7 stride-2 stem and max pooling, as timm's resnet50
    that the reference builds."""
    return ResNet(config.block, list(config.layers), list(config.widths), spatial_dims=2, n_input_channels=1,
                  conv1_t_stride=2, num_classes=config.features)


class ConditionEncoder(nn.Module):
    """The noise-free slice (in [-1, 1], the model's range) -> the conditioning embedding.

    A one-channel 2-D ResNet (MONAI) whose classifier head gives ``features`` values, fed the slice in
    [0, 1] as the reference does, then Linear-SiLU-Linear to the width of the time embedding.
    """

    def __init__(self, config: EncoderConfig, embedding: int):
        super().__init__()
        self.resnet = resnet_of(config)
        self.project = nn.Sequential(nn.Linear(config.features, embedding), nn.SiLU(),
                                     nn.Linear(embedding, embedding))

    def forward(self, clean: torch.Tensor) -> torch.Tensor:
        return self.project(self.resnet((clean + 1) / 2))


class ScaleShiftResBlock(nn.Module):
    """A MONAI residual block whose embedding gives ``h = norm2(h) * (1 + scale) + shift``.

    The scale half of the projection starts at zero, so the block starts as MONAI's own (an added
    shift) and learns how strongly the condition rescales each channel (as DiT's adaLN-Zero).
    """

    def __init__(self, block: DiffusionUNetResnetBlock, embedding: int):
        super().__init__()
        self.norm1, self.nonlinearity, self.conv1 = block.norm1, block.nonlinearity, block.conv1
        self.upsample, self.downsample = block.upsample, block.downsample
        self.norm2, self.conv2, self.skip_connection = block.norm2, block.conv2, block.skip_connection
        self.out_channels = block.out_channels
        self.time_emb_proj = nn.Linear(embedding, 2 * block.out_channels)
        with torch.no_grad():
            self.time_emb_proj.weight[:block.out_channels].zero_()
            self.time_emb_proj.bias[:block.out_channels].zero_()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        scale, shift = self.time_emb_proj(self.nonlinearity(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.nonlinearity(h))
        return self.skip_connection(x) + h


def use_scale_shift(unet: nn.Module, embedding: int) -> None:
    """Every residual block of a MONAI DiffusionModelUNet (up/down-sampling ones included) replaced
    by its scale-shift form, taking an embedding of ``embedding`` values."""
    for module in list(unet.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, DiffusionUNetResnetBlock):
                setattr(module, child_name, ScaleShiftResBlock(child, embedding))


class ConditionedNet(DiffusionNet):
    """cDDPM's network: the U-Net whose residual blocks all take the joint embedding of t and of the
    clean slice, ``model_kwargs["clean"]``; the condition is as wide as the time embedding."""

    def __init__(self, unet: UNetConfig, encoder: EncoderConfig):
        super().__init__(unet)
        width = 4 * unet.channels[0]
        self.condition = ConditionEncoder(encoder, width)
        use_scale_shift(self.unet, 2 * width)

    def embedding(self, t: torch.Tensor, dtype: torch.dtype, model_kwargs: dict) -> torch.Tensor:
        if model_kwargs.get("clean") is None:
            raise ValueError("a conditioned network needs the clean slice")
        emb = super().embedding(t, dtype, model_kwargs)
        return torch.cat([emb, self.condition(model_kwargs["clean"]).to(emb.dtype)], 1)
