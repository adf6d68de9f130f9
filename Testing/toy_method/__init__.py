"""A sixth method, as a newcomer would add one: this folder and one registry line
(``maediff_core.methods.FOLDERS``; the tests register it at run time instead). A denoising
autoencoder of two convolutions: it learns to remove a little Gaussian noise from healthy slices, and
its reconstruction of a slice is its output for the slice itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from maediff_core.diffusion_config import PatchConfig
from maediff_core.methods.base import Cost, Method, ModelConfig, Stage
from maediff_core.methods.graph import Graph


@dataclass(frozen=True)
class ToyConfig(ModelConfig):
    width: int = 8  # channels of the hidden layer
    noise: float = 0.1  # standard deviation of the noise it learns to remove, on [-1, 1]


class ToyNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class Toy(Method):
    name = "toy"
    config_class = ToyConfig
    score = "|input - denoised input|"

    def configs(self) -> dict[str, ModelConfig]:
        return {"toy": ToyConfig("toy", "toy", patch=PatchConfig(whole_slice=True))}

    def check(self, config: ToyConfig) -> None:
        if config.width < 1 or not config.patch.whole_slice:
            raise ValueError("a toy needs a width >= 1 and the whole slice")

    def build(self, config: ToyConfig) -> nn.Module:
        return ToyNet(config.width)

    def stages(self, config: ToyConfig, pretrain: bool = False) -> list[Stage]:
        def objective(network: nn.Module, diffusion):
            def loss(module, x0, brain, generator):
                noise = torch.randn(x0.shape, generator=generator).to(x0.device)
                return (module(x0 + config.noise * noise) - x0).abs().mean()
            return loss

        return [Stage(None, "the model", trains=lambda network: network, objective=objective)]

    def reconstruct(self, runtime, config, image, mask, sampling, progress) -> np.ndarray:
        x = (image.astype(np.float32) * 2 - 1)[:, None]
        progress("reconstruct", 1.0, f"{len(x)} slices")
        rec = np.clip((runtime.run("denoiser", {"x": x})[0][:, 0] + 1) / 2, 0, 1).astype(np.float32)
        return np.repeat(rec[None], sampling.samples, 0)  # deterministic: every draw alike

    def cost(self, config: ToyConfig, network: nn.Module) -> Cost:
        x = torch.zeros(1, 1, config.patch.size, config.patch.size)
        return Cost(1, lambda: network(x), work="1 pass")

    def graphs(self, config: ToyConfig, network: nn.Module) -> dict[str, Graph]:
        return {"denoiser": Graph(network, {"x": torch.zeros(2, 1, config.patch.size, config.patch.size)}, ("x0",))}


METHODS = (Toy(),)
