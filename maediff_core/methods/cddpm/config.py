"""cDDPM's configurations, without torch (methods/base.py): the encoder of its condition beside the
configuration every method shares."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ModelConfig


@dataclass(frozen=True)
class EncoderConfig:
    block: str = "bottleneck"  # cDDPM code: ResNet-50 (bottleneck blocks 3-4-6-3, widths 64..512)
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    features: int = 512  # cDDPM code: U-Net width x 4 (overriding the configured 128)

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(*self.layers, *self.widths, self.features) < 1:
            raise ValueError("a ResNet encoder needs 4 positive layer counts and widths and a positive feature size")


# ResNet-18's basic blocks, one per stage at a quarter of its widths; the condition keeps the
# reference's rule, U-Net width x 4.
SMALL_ENCODER = EncoderConfig(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), features=128)


@dataclass(frozen=True)
class CDDPMConfig(ModelConfig):
    encoder: EncoderConfig = EncoderConfig()  # the encoder of the clean slice
