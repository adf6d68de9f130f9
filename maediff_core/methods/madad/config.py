"""MAD-AD's configurations, without torch (methods/base.py): its autoencoder and the masking of its
latents beside the configuration every method shares."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ModelConfig


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: tuple[int, ...] = (128, 256, 512, 512)  # LDM kl-f8, the reference's: 128 x (1, 2, 4, 4)
    res_blocks: int = 2  # LDM kl-f8
    latent_channels: int = 4  # MAD-AD code (README.md): 4 latent channels
    middle_attention: bool = True  # LDM kl-f8: attention in the middle blocks only
    norm_groups: int = 32
    kl_weight: float = 1e-6  # LDM kl-f8's loss config (the reference's commented-out VAE)

    def __post_init__(self) -> None:
        if not self.channels or min(*self.channels, self.res_blocks, self.latent_channels, self.norm_groups) < 1:
            raise ValueError("autoencoder channels, res_blocks, latent_channels and norm_groups must be positive")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"autoencoder channels {self.channels} must be multiples of norm_groups "
                             f"{self.norm_groups}")
        if not 0 <= self.kl_weight < 1:
            raise ValueError(f"kl_weight must lie in [0, 1), got {self.kl_weight}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class LatentConfig:
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    sizes: tuple[int, ...] = (1, 2, 4, 8)  # MAD-AD code: side of a masked patch, in latent cells
    probabilities: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)  # MAD-AD code
    max_ratio: float = 0.4  # MAD-AD paper: masked ratio ~ U(0, 0.4) per sample
    brain_fraction: float = 0.9  # MAD-AD code: a cell with less brain than this is never masked
    mask_weight: float = 1e-3  # MAD-AD code: MSE(x0) + 0.001 MSE(mask)
    dropout: float = 0.4  # MAD-AD code: U-Net dropout
    eta: float = 0.5  # MAD-AD code: DDIM eta at detection

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.probabilities) or min(self.sizes) < 1:
            raise ValueError("masked patch sizes must be positive, one probability each")
        if min(self.probabilities) < 0 or abs(sum(self.probabilities) - 1) > 1e-6:
            raise ValueError(f"patch size probabilities must be >= 0 and sum to 1, got {self.probabilities}")
        if not (0 < self.max_ratio <= 1 and 0 < self.brain_fraction <= 1 and 0 <= self.dropout < 1
                and self.mask_weight >= 0 and 0 <= self.eta <= 1):
            raise ValueError("need 0 < max_ratio <= 1, 0 < brain_fraction <= 1, 0 <= dropout < 1, "
                             "mask_weight >= 0 and 0 <= eta <= 1")


# The autoencoder's first level, at full resolution, is most of its cost: 16 channels and one block
# there take 0.34 s per training batch of 16 on 2 cores against 1.1-1.5 s at 32. Downsampling 4 (a
# 24 x 24 latent) against 8: validation L1 0.053 against 0.070 of the intensity range after 3 CPU
# minutes each (README.md beside this file).
SMALL_LATENT = LatentConfig(AutoencoderConfig(channels=(16, 32, 64), res_blocks=1, norm_groups=16))


@dataclass(frozen=True)
class MADADConfig(ModelConfig):
    latent: LatentConfig = LatentConfig()  # the autoencoder, and the masking of its latents
