"""The patch methods: pDDPM (patches noised, stride 48 or 16), AnoDDPM (the whole slice noised) and
MAEDiff (pDDPM at stride 16 with a masked-autoencoder module in the U-Net). README.md has the papers'
facts and what was measured here."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ...diffusion_config import NO_ATTENTION, SMALL_UNET, PatchConfig, UNetConfig
from ..base import ImageDiffusion, ModelConfig
from .config import SMALL_MAE, MAEDiffConfig

if TYPE_CHECKING:
    from torch import nn

    from .mae import MAEDiffNet


def visible_cells(mask, grid: int):
    """(B, 1, H, W) patch mask -> (B, N) bool: grid cells not touched by the noised patch (numpy
    arrays in detection, torch tensors in training)."""
    b, _, h, w = mask.shape
    return mask.reshape(b, h // grid, grid, w // grid, grid).sum(axis=(2, 4)).reshape(b, -1) == 0


class PDDPM(ImageDiffusion):
    """Patched DDPM: one x0 prediction per patch position at t_test, the overlaps averaged."""

    name = "pddpm"
    whole_slice = False  # AnoDDPM noises the whole slice

    def configs(self) -> dict[str, ModelConfig]:
        unet = UNetConfig(attention=NO_ATTENTION)
        small = replace(SMALL_UNET, attention=NO_ATTENTION)
        return {"pddpm-s48": ModelConfig("pddpm-s48", "pddpm", unet, PatchConfig(stride=48)),  # MAEDiff paper, Table 1
                "pddpm-s16": ModelConfig("pddpm-s16", "pddpm", unet),
                "pddpm-s48-small": ModelConfig("pddpm-s48-small", "pddpm", small, PatchConfig(stride=48)),
                "pddpm-s16-small": ModelConfig("pddpm-s16-small", "pddpm", small)}

    def check(self, config: ModelConfig) -> None:
        if config.patch.whole_slice != self.whole_slice:
            noised = "the whole slice: whole_slice true" if self.whole_slice else "patches: whole_slice false"
            raise ValueError(f"a {self.name} configuration noises {noised}")

    def build(self, config: ModelConfig) -> nn.Module:
        from ...networks import DiffusionNet

        return DiffusionNet(config.unet)


class AnoDDPM(PDDPM):
    """AnoDDPM as the MAEDiff paper re-implements it: the whole slice noised with simplex noise."""

    name = "anoddpm"
    whole_slice = True

    def configs(self) -> dict[str, ModelConfig]:
        whole = PatchConfig(whole_slice=True)
        return {"anoddpm": ModelConfig("anoddpm", "anoddpm", UNetConfig(attention=NO_ATTENTION), whole),
                "anoddpm-small": ModelConfig("anoddpm-small", "anoddpm", replace(SMALL_UNET, attention=NO_ATTENTION),
                                             whole)}


class MAEDiff(PDDPM):
    """pDDPM whose U-Net completes the feature map under the noised patch from the visible grid cells."""

    name = "maediff"
    config_class = MAEDiffConfig

    def configs(self) -> dict[str, ModelConfig]:
        return {"maediff": MAEDiffConfig("maediff", "maediff"),  # MAEDiff paper Sec. 4.3
                "maediff-small": MAEDiffConfig("maediff-small", "maediff", SMALL_UNET, mae=SMALL_MAE)}

    def check(self, config: MAEDiffConfig) -> None:
        super().check(config)
        if config.patch.size % (4 * config.mae.cell):
            raise ValueError(f"mae.cell {config.mae.cell} does not tile the {config.patch.size // 4}-pixel feature map")

    def check_sampling(self, config: MAEDiffConfig, stride: int) -> None:
        # The MAE module sees whole grid cells: a patch off the grid hides a different number of them.
        if stride % config.patch.grid:
            raise ValueError(f"stride {stride}: a MAEDiff model's patches lie on its {config.patch.grid}-pixel grid "
                             f"(MAEDiff paper Sec. 3.2); use a multiple of {config.patch.grid}")

    def build(self, config: MAEDiffConfig) -> nn.Module:
        from .mae import MAEDiffNet

        return MAEDiffNet(config.unet, config.mae, config.patch.size)

    def model_kwargs(self, config: MAEDiffConfig, x0, masks) -> dict:
        return {"visible": visible_cells(masks, config.patch.grid)}

    def parts(self, network: MAEDiffNet) -> dict[str, nn.Module]:
        return {"MAE": network.mae}

    def sizes_text(self, config: MAEDiffConfig) -> str:
        mae = config.mae
        return (f"{super().sizes_text(config)}; MAE {mae.encoder_depth} x {mae.encoder_width} / "
                f"{mae.decoder_depth} x {mae.decoder_width}")

    def network_text(self, config: MAEDiffConfig) -> str:
        return super().network_text(config) + ", masked-autoencoder module"


METHODS = (MAEDiff(), PDDPM(), AnoDDPM())
