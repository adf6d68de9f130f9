"""Masked pre-training of cDDPM's encoder on healthy slices (SparK, arXiv 2301.03580), an optional
training stage before the conditioned denoiser (``maediff train --pretrain``).

SparK treats the visible cells of a masked image as a sparse input to an unmodified CNN: every
convolution and pooling output is zeroed outside the visible cells and batch normalisation takes its
statistics over the visible positions only, so the hidden cells never leak into what the encoder
sees. A light U-Net-like decoder fills each stage's hidden positions with a learnt token and
reconstructs the per-cell normalised slice; the loss is the squared error on the hidden cells.

The ResNet keeps its own module names, so its weights load straight into ``ConditionEncoder``. The
sparsity is written here rather than taken from a library: MONAI has no sparse convolution, and the
reference's SparK code patches timm's modules, which this project does not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn

from .conditioning import resnet_of
from .config import EncoderConfig

STRIDE = 32  # the ResNet's total downsampling: one mask cell is one position of its deepest stage


@dataclass(frozen=True)
class PretrainConfig:
    mask_ratio: float = 0.65  # cDDPM code's SparK setting (SparK's paper: 0.6)
    weight_decay: float = 0.05  # cDDPM code's SparK setting, with AdamW
    decoder_floor: int = 16  # fewest channels of a decoder level; SparK's widths halve per level from deep // 4


def at_resolution(cells: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Boolean cells (N, 1, h, w) as a float (N, 1, H, W) mask at the resolution of ``x``."""
    return F.interpolate(cells.to(x.dtype), size=x.shape[-2:], mode="nearest")


class Visible:
    """The visible cells of the batch being encoded, (N, 1, h, w) bool, or None outside pre-training.

    It is also the forward hook that zeroes a convolution's or pooling's output outside those cells.
    An object rather than a closure, so a deep copy of the network (an EMA) gets its own.
    """

    def __init__(self) -> None:
        self.cells: torch.Tensor | None = None

    def at(self, x: torch.Tensor) -> torch.Tensor:
        return at_resolution(self.cells, x)

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        return None if self.cells is None else output * self.at(output)


class SparseBatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation over the visible positions only; hidden positions stay zero."""

    def __init__(self, bn: nn.BatchNorm2d, visible: Visible):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.visible = visible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.visible.cells is None:
            return super().forward(x)
        keep = self.visible.at(x)[:, 0].bool()  # (N, H, W)
        values = x.permute(0, 2, 3, 1)[keep]  # (M, C): the visible positions
        out = torch.zeros_like(x.permute(0, 2, 3, 1))
        out[keep] = super().forward(values[:, :, None, None])[:, :, 0, 0]
        return out.permute(0, 3, 1, 2)


def make_sparse(resnet: ResNet, visible: Visible) -> None:
    """``resnet`` in place: its convolutions and poolings masked by ``visible``, its batch norms sparse."""
    for module in list(resnet.modules()):
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            module.register_forward_hook(visible)
        for name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(module, name, SparseBatchNorm2d(child, visible))


def stage_channels(resnet: ResNet) -> list[int]:
    """Output channels of the ResNet's four stages (strides 4, 8, 16, 32)."""
    def out_channels(block: nn.Module) -> int:
        return (block.conv3 if isinstance(block, ResNetBottleneck) else block.conv2).out_channels

    return [out_channels(getattr(resnet, f"layer{i}")[-1]) for i in range(1, 5)]


def stage_features(resnet: ResNet, image01: torch.Tensor) -> list[torch.Tensor]:
    """The four stages' outputs, shallow to deep."""
    x = resnet.maxpool(resnet.act(resnet.bn1(resnet.conv1(image01))))
    features = []
    for i in range(1, 5):
        x = getattr(resnet, f"layer{i}")(x)
        features.append(x)
    return features


class UpBlock(nn.Module):
    """SparK's decoder block: a transposed convolution doubling the resolution, two 3 x 3 convolutions."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(True),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class MaskedPretrainer(nn.Module):
    """cDDPM's ResNet (sparse while pre-training) and SparK's decoder."""

    def __init__(self, encoder: EncoderConfig, config: PretrainConfig = PretrainConfig()):
        super().__init__()
        self.visible = Visible()
        self.resnet = resnet_of(encoder)
        make_sparse(self.resnet, self.visible)
        channels = stage_channels(self.resnet)[::-1]  # deep to shallow
        widths = [max(channels[0] // 4 >> i, config.decoder_floor) for i in range(6)]  # strides 32 .. 1
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels])
        for token in self.tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)  # SparK's mask tokens
        self.densify = nn.ModuleList([nn.Conv2d(c, w, 1 if i == 0 else 3, padding=0 if i == 0 else 1)
                                      for i, (c, w) in enumerate(zip(channels, widths, strict=False))])
        self.blocks = nn.ModuleList([UpBlock(widths[i], widths[i + 1]) for i in range(5)])
        self.head = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, image01: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``image01`` (N, 1, H, W, in [0, 1]) from its ``cells`` (N, 1, H/32, W/32)."""
        self.visible.cells = cells
        try:
            features = stage_features(self.resnet, image01 * self.visible.at(image01))[::-1]
        finally:
            self.visible.cells = None
        dense = []
        for feature, token, densify in zip(features, self.tokens, self.densify, strict=True):
            keep = at_resolution(cells, feature)
            dense.append(densify(feature * keep + token * (1 - keep)))
        x = dense[0]
        for i, block in enumerate(self.blocks):
            if 0 < i < len(dense):
                x = x + dense[i]
            x = block(x)
        return self.head(x)


def visible_cells(n: int, height: int, width: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, height/32, width/32) bool: per slice, a random round(cells x (1 - ratio)) of them visible."""
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"masked pre-training needs slices whose sides are multiples of {STRIDE}, "
                         f"got {height} x {width}")
    h, w = height // STRIDE, width // STRIDE
    keep = max(1, round(h * w * (1 - ratio)))
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    return (order < keep).reshape(n, 1, h, w)


def cell_pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/32, W/32, C x 32 x 32): the pixels of each cell."""
    n, c, height, width = x.shape
    h, w = height // STRIDE, width // STRIDE
    return x.reshape(n, c, h, STRIDE, w, STRIDE).permute(0, 2, 4, 1, 3, 5).reshape(n, h, w, -1)


def cell_normalised(image01: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SparK's target: each cell's pixels minus their mean, over their standard deviation."""
    pixels = cell_pixels(image01)
    mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, unbiased=True, keepdim=True)
    return (pixels - mean) / (var + eps).sqrt()


def pretraining_loss(model: MaskedPretrainer, x0: torch.Tensor, brain: torch.Tensor, generator: torch.Generator,
                     config: PretrainConfig = PretrainConfig()) -> torch.Tensor:
    """Squared error on the hidden cells that hold brain (the rest of the slice is empty background
    and would only teach zeros); ``x0`` is in the model's [-1, 1]."""
    image01 = (x0 + 1) / 2
    cells = visible_cells(x0.shape[0], *x0.shape[-2:], config.mask_ratio, generator).to(x0.device)
    error = (cell_pixels(model(image01, cells)) - cell_normalised(image01)).pow(2).mean(-1)  # (N, h, w)
    counted = (~cells[:, 0] & (cell_pixels(brain) > 0).any(-1)).to(error.dtype)
    return (error * counted).sum() / counted.sum().clamp(min=1)
