"""MAD-AD's networks (farzad-bz/MAD-AD; README.md beside this file): a KL autoencoder that maps a
slice to a latent, and a U-Net on that latent with two heads, the clean latent and a map of the cells
it finds corrupted.

The reference fine-tunes a pretrained RGB autoencoder; nothing may be downloaded here, so ours is
MONAI's AutoencoderKL trained from scratch on the healthy slices (L1 and a small KL term: the
reference's perceptual and adversarial losses need pretrained networks).
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn

from ...diffusion_config import UNetConfig
from .config import AutoencoderConfig, LatentConfig


class Autoencoder(nn.Module):
    """A one-channel slice in [-1, 1] <-> a latent of ``latent_channels`` x size / downsampling."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        levels = len(config.channels)
        self.vae = AutoencoderKL(
            spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=config.res_blocks,
            channels=config.channels, attention_levels=(False,) * levels, latent_channels=config.latent_channels,
            norm_num_groups=config.norm_groups, with_encoder_nonlocal_attn=config.middle_attention,
            with_decoder_nonlocal_attn=config.middle_attention,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and standard deviation."""
        return self.vae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """(decoding, mean, standard deviation): the decoding of the mean, or of the posterior
        sample mean + sd * ``noise`` (one call, so that DistributedDataParallel sees every weight)."""
        mu, sigma = self.encode(x)
        return self.decode(mu if noise is None else mu + sigma * noise), mu, sigma


class LatentDenoiser(nn.Module):
    """The masked-latent U-Net: (z_t, t) -> (the clean latent, the logit that a cell was kept).

    Both heads are channel groups of the U-Net's last convolution. ``scale`` brings the autoencoder's
    latents to unit variance (LDM's scale factor, the reference's 0.18215), fitted on the training
    slices when this stage starts and saved with these weights.
    """

    def __init__(self, unet: UNetConfig, latent: LatentConfig):
        super().__init__()
        channels = latent.autoencoder.latent_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=channels, out_channels=channels + 1, channels=unet.channels,
            attention_levels=unet.attention, num_res_blocks=unet.res_blocks, num_head_channels=unet.head_channels,
            norm_num_groups=unet.norm_groups, resblock_updown=True,
        )
        if latent.dropout:
            add_dropout(self.unet, latent.dropout)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.unet(z, t)
        return out[:, :-1], out[:, -1:]


def add_dropout(unet: nn.Module, p: float) -> None:
    """Dropout before the second convolution of every residual block, where guided-diffusion (the
    reference's U-Net) has it; MONAI's block has no dropout option."""
    for module in unet.modules():
        if isinstance(module, DiffusionUNetResnetBlock):
            module.conv2 = nn.Sequential(nn.Dropout(p), module.conv2)


class MaskedLatentNet(nn.Module):
    """MAD-AD: the autoencoder and the latent denoiser, each with its own weight file."""

    def __init__(self, unet: UNetConfig, latent: LatentConfig, size: int = 96):
        super().__init__()
        if size % latent.autoencoder.downsampling:
            raise ValueError(f"the autoencoder's downsampling {latent.autoencoder.downsampling} does not divide {size}")
        self.latent = latent
        self.autoencoder = Autoencoder(latent.autoencoder)
        self.denoiser = LatentDenoiser(unet, latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled mean latent of slices in [-1, 1] (no sampling: detection is deterministic)."""
        return self.autoencoder.encode(x)[0] * self.denoiser.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.denoiser.scale)
