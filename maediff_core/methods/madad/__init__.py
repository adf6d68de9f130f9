"""MAD-AD (farzad-bz/MAD-AD): masked diffusion in the latent space of a KL autoencoder. Training has two
stages, the autoencoder and then, with it frozen, the latent denoiser; detection repairs the
input's latent in DDIM steps and scores the change. README.md has the papers' facts and what was
measured here."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ...diffusion_config import DiffusionConfig, PatchConfig, UNetConfig
from ..base import Cost, Method, ModelConfig, Progress, Sampling, Stage
from .config import SMALL_LATENT, MADADConfig

if TYPE_CHECKING:
    from torch import nn

    from ...torch_runtime import TorchRuntime
    from ..graph import Graph
    from .networks import MaskedLatentNet

SCALE_SLICES = 256  # training slices the latent scale is fitted on


def fit_scale(network: MaskedLatentNet, data) -> None:
    """The denoiser stage's start: its latents brought to unit variance on the training slices
    (``data``: training.slices.SliceData); a resumed run loads its own scale."""
    from .repair import fit_latent_scale

    slices = data.spread(SCALE_SLICES).to(network.denoiser.scale.device)
    network.denoiser.scale.fill_(fit_latent_scale(network.autoencoder, slices))


class MADAD(Method):
    name = "madad"
    config_class = MADADConfig
    score = "|decode(repaired latent) - decode(latent)|, the change MAD-AD's repair makes"
    extra_weights = ("autoencoder",)
    graph_names = ("encoder", "denoiser", "decoder")
    runtimes = ("torch",)  # the DDIM repair (repair.py) runs in torch only; its graphs are exported all the same

    def configs(self) -> dict[str, ModelConfig]:
        # MAD-AD code (README.md): U-Net 256 x (1, 2, 4), 2 blocks, attention at every level; T = 10,
        # cosine schedule, Gaussian noise; detection runs all 10 DDIM steps from the input's latent.
        paper = MADADConfig("madad", "madad",
                            UNetConfig(channels=(256, 512, 1024), res_blocks=2, attention=(True,) * 3),
                            PatchConfig(whole_slice=True),
                            DiffusionConfig(timesteps=10, schedule="cosine", noise="gaussian", t_test=(10,)))
        # Its latent is 24 x 24 at most: the small U-Net keeps attention everywhere.
        small = replace(paper, name="madad-small", latent=SMALL_LATENT,
                        unet=UNetConfig(channels=(32, 64, 64), res_blocks=2, attention=(True,) * 3, head_channels=32))
        return {"madad": paper, "madad-small": small}

    def check(self, config: MADADConfig) -> None:
        if not config.patch.whole_slice:
            raise ValueError("MAD-AD works on the whole slice's latent: whole_slice true")

    def build(self, config: MADADConfig) -> nn.Module:
        from .networks import MaskedLatentNet

        return MaskedLatentNet(config.unet, config.latent, config.patch.size)

    def weight_parts(self, network: MaskedLatentNet) -> dict[str, nn.Module]:
        return {"": network.denoiser, "autoencoder": network.autoencoder}

    def parts(self, network: MaskedLatentNet) -> dict[str, nn.Module]:
        return {"autoencoder": network.autoencoder}

    def stages(self, config: MADADConfig, pretrain: bool = False) -> list[Stage]:
        def autoencoder_objective(network: MaskedLatentNet, diffusion):
            from .repair import autoencoder_loss

            return partial(autoencoder_loss, config=config.latent.autoencoder)

        def denoiser_objective(network: MaskedLatentNet, diffusion):
            from .repair import denoiser_loss

            return partial(denoiser_loss, network=network, diffusion=diffusion)

        autoencoder = Stage("autoencoder", "the autoencoder stage", trains=lambda network: network.autoencoder,
                            objective=autoencoder_objective)
        denoiser = Stage("denoiser", "the denoiser stage", trains=lambda network: network.denoiser,
                         objective=denoiser_objective,
                         takes_into=lambda network: network.autoencoder, frozen=True, prepare=fit_scale)
        return [autoencoder, denoiser]

    def reconstruct(self, runtime: TorchRuntime, config: MADADConfig, image: np.ndarray, mask: np.ndarray,
                    sampling: Sampling, progress: Progress) -> np.ndarray:
        from ...diffusion import Diffusion
        from .repair import repair_volume

        return repair_volume(runtime.network, Diffusion(config.diffusion), image, mask, sampling.levels, sampling.seed,
                             sampling.batch, runtime.torch_device, progress, sampling.samples)

    def cost(self, config: MADADConfig, network: MaskedLatentNet) -> Cost:
        import torch

        x = torch.zeros(1, 1, config.patch.size, config.patch.size)
        z = network.encode(x)
        levels = config.diffusion.t_test
        # One denoiser pass per DDIM step, from each starting step of the ensemble; per level one
        # encoding and two decodings (the repaired latent and the input's).
        return Cost(sum(levels), lambda: network.denoiser(z, torch.tensor([1])),
                    extras=(lambda: network.encode(x), lambda: network.decode(z), lambda: network.decode(z)),
                    work=f"{sum(levels)} DDIM steps from {len(levels)} t_test + autoencoder")

    def graphs(self, config: MADADConfig, network: MaskedLatentNet) -> dict[str, Graph]:
        """What :func:`repair_volume` runs: the scaled mean latent of slices, the denoiser's step and
        the decoding."""
        import torch

        from ..graph import Call, Graph

        x = torch.rand(2, 1, config.patch.size, config.patch.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            z = network.encode(x)
        return {"encoder": Graph(Call(network, "encode"), {"x": x}, ("z",)),
                "denoiser": Graph(network.denoiser, {"z": z, "t": torch.tensor([config.diffusion.t_test[0]] * 2)},
                                  ("z0", "keep_logit")),
                "decoder": Graph(Call(network, "decode"), {"z": z}, ("x",))}

    def sizes_text(self, config: MADADConfig) -> str:
        a = config.latent.autoencoder
        side = config.patch.size // a.downsampling
        return (f"{super().sizes_text(config)}; autoencoder {'/'.join(map(str, a.channels))} x {a.res_blocks} "
                f"blocks -> {a.latent_channels} x {side} x {side}")

    def noised_region(self, config: MADADConfig) -> str:
        a = config.latent.autoencoder
        side = config.patch.size // a.downsampling
        return (f"random patches of the latent of a KL autoencoder (channels {list(a.channels)}, "
                f"{a.latent_channels} x {side} x {side}); detection repairs the input's latent in DDIM steps")


METHODS = (MADAD(),)
