"""What a method is to the engine: its configuration, its network, its training stages, how it
reconstructs a volume and what its card says. Training, detection, profiling and the benchmark call
these and never ask which method they hold.

Reading a card and detecting on ONNX Runtime import this without torch or MONAI (runtime.py): the
hooks that build, train, export or profile a network import torch where they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..diffusion_config import DiffusionConfig, PatchConfig, UNetConfig, levels_text, noised_input, patch_masks
from ..patch_diffusion import reconstruct_patches

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..diffusion import Diffusion
    from ..runtime import Runtime
    from .graph import Graph

    # (the module a stage trains, x0 in [-1, 1] (B, 1, H, W), brain mask (B, 1, H, W), generator) -> loss
    Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
# (stage, fraction done, message): detection reports its progress through this
Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class ModelConfig:
    """What every method's configuration holds. A method's own parts are the fields of its own
    subclass (``Method.config_class``); a card stores them beside these."""

    name: str
    method: str
    unet: UNetConfig = UNetConfig()
    patch: PatchConfig = PatchConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    def __post_init__(self) -> None:
        from . import method_of

        method = method_of(self.method)
        if type(self) is not method.config_class:
            raise ValueError(f"a {self.method} configuration is a {method.config_class.__name__}")
        self.patch.positions()  # the stride tiles the slice
        method.check(self)

    def build(self) -> nn.Module:
        from . import method_of

        return method_of(self.method).build(self)

    def parameter_count(self) -> int:
        """Parameters of :meth:`build`, counted on the meta device (no memory taken)."""
        import torch

        with torch.device("meta"):
            return sum(p.numel() for p in self.build().parameters())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """From JSON, every value checked against its declared type and range (modelfile.parsing)."""
        from ..modelfile.parsing import parse_model_config

        return parse_model_config(data)


@dataclass(frozen=True)
class Sampling:
    """How one reconstruction of a volume is drawn: its noise levels (averaged when several), the
    patch stride, the seed of its noise and the forward passes batched together."""

    levels: tuple[int, ...]
    stride: int
    seed: int
    batch: int
    samples: int = 1  # reconstructions drawn, each with its own noise (scoring.py)


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(parameters, lr=lr)


@dataclass(frozen=True)
class Stage:
    """One stage of a method's training: what it trains, with which objective and optimiser, and,
    after a first stage, how it takes that stage's best weights."""

    name: str | None  # None: the whole model in one stage; else `train --stage NAME`, and an earlier stage's folder
    title: str  # what a card says it was: "the autoencoder stage"
    trains: Callable[[nn.Module], nn.Module]  # the network -> the module trained (a part of it, or one of its own)
    objective: Callable[[nn.Module, Diffusion], Objective]  # (the network, its diffusion) -> the loss
    optimizer: Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer] = adam
    optional: bool = False  # a first stage that runs only with `train --pretrain`
    # The previous stage's best weights go into this part of the network, from its tensors under
    # ``prefix``; frozen, they stay fixed and the model's card names their file (an extra weight).
    takes_into: Callable[[nn.Module], nn.Module] | None = None
    prefix: str = ""
    frozen: bool = False
    # Once they are in: (the network, the training slices, training.slices.SliceData).
    prepare: Callable[[nn.Module, object], None] | None = None
    unused_parameters: bool = False  # DistributedDataParallel: parameters the objective leaves unused


@dataclass(frozen=True)
class Cost:
    """What a method's detection costs per slice, for `maediff models`: ``passes`` forwards (what
    ``forward`` runs) and, per noise level, ``extras`` (other passes, each a callable)."""

    passes: int
    forward: Callable[[], object]
    extras: tuple[Callable[[], object], ...] = ()
    work: str = ""  # how the passes arise, in words


class Method:
    """A family of models. Subclasses set the class attributes and implement the methods that raise
    NotImplementedError; one registry line (methods/__init__.py) makes a subclass's instance a
    method of every command."""

    name: str
    config_class: type[ModelConfig] = ModelConfig
    score = "|input - reconstruction|"  # what the anomaly score compares
    augment = False  # intensity augmentation in training unless told, as the method's paper trains
    extra_weights: tuple[str, ...] = ()  # parts whose weights are files of their own, named in the card
    graph_names: tuple[str, ...] = ("denoiser",)  # the networks detection runs, as :meth:`graphs` names them
    runtimes: tuple[str, ...] = ("torch", "onnx")  # where :meth:`reconstruct` runs (runtime.py)

    def configs(self) -> dict[str, ModelConfig]:
        """The named configurations: the paper's, and a CPU-sized ``-small`` one."""
        raise NotImplementedError

    def check(self, config: ModelConfig) -> None:
        """Refuse a configuration this method cannot build or run (ValueError)."""

    def build(self, config: ModelConfig) -> nn.Module:
        raise NotImplementedError

    def stages(self, config: ModelConfig, pretrain: bool = False) -> list[Stage]:
        """The training stages in order (with the optional ones where ``pretrain``)."""
        raise NotImplementedError

    def reconstruct(self, runtime: Runtime, config: ModelConfig, image: np.ndarray, mask: np.ndarray,
                    sampling: Sampling, progress: Progress) -> np.ndarray:
        """``sampling.samples`` healthy reconstructions (samples, z, y, x) in 0..1 of a model-space
        volume in 0..1, each drawn with its own noise from ``sampling.seed`` on, by the networks of
        :meth:`graphs` as ``runtime`` runs them."""
        raise NotImplementedError

    def cost(self, config: ModelConfig, network: nn.Module) -> Cost:
        raise NotImplementedError

    def graphs(self, config: ModelConfig, network: nn.Module) -> dict[str, Graph]:
        """Every network :meth:`reconstruct` runs, by name, with example inputs (onnx_export.py)."""
        raise NotImplementedError

    def weight_parts(self, network: nn.Module) -> dict[str, nn.Module]:
        """The model's weight files: "" (the model's own file) and each of ``extra_weights``."""
        return {"": network}

    def parts(self, network: nn.Module) -> dict[str, nn.Module]:
        """Parts worth counting apart in `maediff models` (label -> module)."""
        return {}

    def check_sampling(self, config: ModelConfig, stride: int) -> None:
        """Refuse a stride this method cannot reconstruct with (ValueError)."""

    def sizes_text(self, config: ModelConfig) -> str:
        """The sizes that distinguish a configuration."""
        unet = config.unet
        return f"U-Net {'/'.join(map(str, unet.channels))} x {unet.res_blocks} blocks"

    def network_text(self, config: ModelConfig) -> str:
        """The network, for the model card."""
        unet = config.unet
        return f"U-Net channels {list(unet.channels)}, {unet.res_blocks} residual blocks per level"

    def noised_region(self, config: ModelConfig) -> str:
        """What detection noises, for the model card."""
        patch = config.patch
        if patch.whole_slice:
            return "the whole slice"
        return f"{patch.patch} x {patch.patch} patches, stride {patch.stride}"

    def noised_text(self, config: ModelConfig) -> str:
        """What detection noises and how, for the model card."""
        diffusion = config.diffusion
        return (f"{self.noised_region(config)}; {diffusion.noise} noise, {diffusion.schedule} schedule, t_test "
                f"{levels_text(diffusion.t_test)} of {diffusion.timesteps}"
                + (" (predictions averaged)" if len(diffusion.t_test) > 1 else ""))


class ImageDiffusion(Method):
    """A method whose network predicts x0 from a slice noised in image space: one training stage of
    Algorithm 1 (diffusion.py), detection by Algorithm 2 (patch_diffusion.py) on either runtime.
    Subclasses give the network and what it takes besides (x_t, t): :meth:`model_kwargs`."""

    def model_kwargs(self, config: ModelConfig, x0, masks) -> dict:
        """The network's keyword arguments for slices ``x0`` noised under ``masks`` (B, 1, H, W), numpy
        arrays in detection and torch tensors in training alike."""
        return {}

    def stages(self, config: ModelConfig, pretrain: bool = False) -> list[Stage]:
        return [self.main_stage(config)]

    def main_stage(self, config: ModelConfig) -> Stage:
        def objective(network: nn.Module, diffusion: Diffusion) -> Objective:
            from ..diffusion import training_step

            def loss(module: nn.Module, x0: torch.Tensor, brain: torch.Tensor, generator: torch.Generator):
                return training_step(module, x0, generator, config.patch, diffusion,
                                     lambda x, masks: self.model_kwargs(config, x, masks))
            return loss

        return Stage(None, "the model", trains=lambda network: network, objective=objective)

    def reconstruct(self, runtime: Runtime, config: ModelConfig, image: np.ndarray, mask: np.ndarray,
                    sampling: Sampling, progress: Progress) -> np.ndarray:
        return reconstruct_patches(runtime, config.patch, config.diffusion, image, mask, sampling,
                                   lambda x, masks: self.model_kwargs(config, x, masks), progress)

    def graphs(self, config: ModelConfig, network: nn.Module) -> dict[str, Graph]:
        """The x0-predicting network, its keyword arguments after (x_t, t): two slices, each with a patch
        noised. The noised slices and the clean ones are distinct tensors: the exporter would merge
        one tensor passed twice into one input (cDDPM's ``clean`` with ``x``)."""
        import torch

        from .graph import Call, Graph

        patch, generator = config.patch, torch.Generator().manual_seed(0)
        x0 = torch.rand(2, 1, patch.size, patch.size, generator=generator) * 2 - 1
        positions = patch.positions()
        masks = torch.from_numpy(patch_masks(np.array([positions[0], positions[-1]]), patch))
        x = noised_input(x0, torch.randn(x0.shape, generator=generator), masks)
        kwargs = self.model_kwargs(config, x0, masks)
        inputs = {"x": x, "t": torch.tensor([config.diffusion.t_test[0]] * 2), **kwargs}
        return {"denoiser": Graph(Call(network, keywords=tuple(kwargs)), inputs, ("x0",))}

    def cost(self, config: ModelConfig, network: nn.Module) -> Cost:
        import torch

        patch = config.patch
        x = torch.zeros(1, 1, patch.size, patch.size)
        masks = torch.from_numpy(patch_masks(np.array([patch.positions()[0]]), patch))
        positions, levels = len(patch.positions()), len(config.diffusion.t_test)
        return Cost(positions * levels, lambda: network(x, torch.tensor([500]), **self.model_kwargs(config, x, masks)),
                    work=f"{positions:2d} positions x {levels} t_test")
