"""cDDPM (arXiv 2312.04215): a whole-slice denoiser conditioned on an encoding of its own noise-free
input, trained with intensity augmentation, detecting with an ensemble of three noise levels; its
encoder can first be pre-trained on masked slices (SparK). README.md has the papers' facts and what
was measured here."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from ...diffusion_config import NO_ATTENTION, SMALL_UNET, DiffusionConfig, PatchConfig, UNetConfig
from ...errors import OptionError
from ..base import ImageDiffusion, ModelConfig, Stage
from .config import SMALL_ENCODER, CDDPMConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .conditioning import ConditionedNet
    from .pretraining import MaskedPretrainer

class CDDPM(ImageDiffusion):
    name = "cddpm"
    config_class = CDDPMConfig
    augment = True  # cDDPM code: aug_intensity in training

    def configs(self) -> dict[str, ModelConfig]:
        # cDDPM code (docs/reference.md): the whole slice noised, cosine schedule, x0 at t = 250, 500, 750 averaged.
        paper = CDDPMConfig("cddpm", "cddpm", UNetConfig(attention=NO_ATTENTION), PatchConfig(whole_slice=True),
                            DiffusionConfig(schedule="cosine", t_test=(250, 500, 750)))
        small = replace(paper, name="cddpm-small", unet=replace(SMALL_UNET, attention=NO_ATTENTION),
                        encoder=SMALL_ENCODER)
        return {"cddpm": paper, "cddpm-small": small}

    def check(self, config: CDDPMConfig) -> None:
        if not config.patch.whole_slice:
            raise ValueError("a cddpm configuration noises the whole slice: whole_slice true")

    def build(self, config: CDDPMConfig) -> nn.Module:
        from .conditioning import ConditionedNet

        return ConditionedNet(config.unet, config.encoder)

    def model_kwargs(self, config: CDDPMConfig, x0, masks) -> dict:
        return {"clean": x0}

    def stages(self, config: CDDPMConfig, pretrain: bool = False) -> list[Stage]:
        main = replace(self.main_stage(config), takes_into=lambda network: network.condition.resnet,
                       prefix="resnet.")
        if not pretrain:
            return [main]
        import torch

        from .pretraining import STRIDE, MaskedPretrainer, PretrainConfig, pretraining_loss

        pretraining = PretrainConfig()

        def pretrainer(network: nn.Module) -> MaskedPretrainer:
            if config.patch.size % STRIDE:
                raise OptionError(f"encoder pre-training needs slices whose side is a multiple of {STRIDE}, "
                                  f"not {config.patch.size}")
            return MaskedPretrainer(config.encoder, pretraining)

        def optimizer(parameters, lr: float) -> torch.optim.Optimizer:
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=pretraining.weight_decay)

        encoder = Stage("encoder", "the encoder's masked pre-training (SparK; its weights trained on with the whole "
                                   "network)", trains=pretrainer,
                        objective=lambda network, diffusion: partial(pretraining_loss, config=pretraining),
                        optimizer=optimizer, optional=True, unused_parameters=True)  # the ResNet's classifier head
        return [encoder, main]

    def parts(self, network: ConditionedNet) -> dict[str, nn.Module]:
        return {"encoder": network.condition}

    def sizes_text(self, config: CDDPMConfig) -> str:
        e = config.encoder
        return (f"{super().sizes_text(config)}; ResNet {e.block} {'-'.join(map(str, e.layers))}, "
                f"{e.widths[0]}..{e.widths[-1]} -> {e.features}")

    def network_text(self, config: CDDPMConfig) -> str:
        e = config.encoder
        return (super().network_text(config)
                + f", conditioned on a ResNet encoding ({e.block} blocks {list(e.layers)}) of the input")


METHODS = (CDDPM(),)
