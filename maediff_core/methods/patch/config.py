"""The patch methods' configurations, without torch (methods/base.py): MAEDiff's masked-autoencoder
module beside the configuration every method shares."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ModelConfig


@dataclass(frozen=True)
class MAEConfig:
    encoder_depth: int = 12  # paper Sec. 4.3: ViT-Small
    encoder_width: int = 384
    encoder_heads: int = 6
    decoder_depth: int = 8  # paper Sec. 4.3
    decoder_width: int = 512
    decoder_heads: int = 16
    cell: int = 4  # grid r = 16 on the image is r / 4 = 4 on the H/4 feature map
    mlp_ratio: float = 4.0  # standard ViT

    def __post_init__(self) -> None:
        sizes = (self.encoder_depth, self.encoder_width, self.encoder_heads, self.decoder_depth,
                 self.decoder_width, self.decoder_heads, self.cell)
        if min(sizes) < 1 or self.mlp_ratio <= 0:
            raise ValueError("MAE depths, widths, heads, cell and mlp_ratio must be positive")
        for width, heads in ((self.encoder_width, self.encoder_heads), (self.decoder_width, self.decoder_heads)):
            if width % heads or width % 4:
                raise ValueError(f"width {width} must be a multiple of 4 and of its {heads} heads")


# The small MAE keeps the paper's layout at a third of its width and half its depth.
SMALL_MAE = MAEConfig(encoder_depth=4, encoder_width=128, encoder_heads=4, decoder_depth=4, decoder_width=128,
                      decoder_heads=4)


@dataclass(frozen=True)
class MAEDiffConfig(ModelConfig):
    mae: MAEConfig = MAEConfig()
