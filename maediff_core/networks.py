"""The generator: a guided-diffusion-style U-Net (MONAI's DiffusionModelUNet) with the MAEDiff
masked-autoencoder module between its encoder and its bottleneck (paper Sec. 3.3, Fig. 2).

One class serves every method: without ``mae`` it is the pDDPM / AnoDDPM U-Net, and with an
``encoder`` of the clean slice (conditioning.py) it is cDDPM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.blocks import CrossAttentionBlock, MLPBlock, SABlock
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from .conditioning import ConditionEncoder, EncoderConfig, use_scale_shift


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (128, 256, 256)  # REFERENCE.md: 128 x (1, 2, 2)
    res_blocks: int = 3  # REFERENCE.md
    attention: tuple[bool, ...] = (False, True, True)  # paper Table 2: global attention at 48 and 24
    head_channels: int = 64  # REFERENCE.md: 64 channels per attention head
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or min(self.res_blocks, self.head_channels, self.norm_groups) < 1:
            raise ValueError("channels, res_blocks, head_channels and norm_groups must be positive")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_groups {self.norm_groups}")
        if len(self.attention) != len(self.channels):
            raise ValueError(f"attention needs one flag per level ({len(self.channels)}), got {len(self.attention)}")


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


def sincos_2d(width: int, side: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (side * side, width), as in MAE."""
    if width % 4:
        raise ValueError(f"position embedding width {width} must be divisible by 4")
    omega = 1.0 / 10000 ** (np.arange(width // 4) / (width // 4))
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    parts = []
    for coord in (ys.ravel(), xs.ravel()):
        angles = np.outer(coord, omega)
        parts += [np.sin(angles), np.cos(angles)]
    return torch.tensor(np.concatenate(parts, 1), dtype=torch.float32)


class DecoderBlock(nn.Module):
    """MAE decoder block: cross-attention to the visible latents FIRST, then self-attention and MLP
    (paper Sec. 3.3; MONAI's TransformerBlock puts cross-attention after self-attention)."""

    def __init__(self, width: int, heads: int, context_width: int, mlp_ratio: float):
        super().__init__()
        self.norm_cross = nn.LayerNorm(width)
        self.cross = CrossAttentionBlock(width, heads, context_input_size=context_width)
        self.norm_self = nn.LayerNorm(width)
        self.attn = SABlock(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, int(width * mlp_ratio))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.cross(self.norm_cross(tokens), context=context)
        tokens = tokens + self.attn(self.norm_self(tokens))
        return tokens + self.mlp(self.norm_mlp(tokens))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.attn = SABlock(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, int(width * mlp_ratio))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm_attn(tokens))
        return tokens + self.mlp(self.norm_mlp(tokens))


class MAEModule(nn.Module):
    """Masked autoencoder over the grid cells of the U-Net encoder feature map f (C x H/4 x W/4).

    The encoder sees only the visible cells; the decoder sees every cell and cross-attends to the
    encoder blocks in a U shape (first decoder block <-> last encoder block). The decoded tokens are
    upsampled by transposed convolutions and returned to be ADDED to f.
    """

    def __init__(self, channels: int, side: int, config: MAEConfig):
        super().__init__()
        self.config = config
        self.side = side // config.cell  # cells per row: 24 / 4 = 6 -> N = 36 tokens
        token_in = channels * config.cell**2
        self.embed_encoder = nn.Linear(token_in, config.encoder_width)  # two distinct projections
        self.embed_decoder = nn.Linear(token_in, config.decoder_width)  # (paper Sec. 4.3)
        self.register_buffer("pos_encoder", sincos_2d(config.encoder_width, self.side), persistent=False)
        self.register_buffer("pos_decoder", sincos_2d(config.decoder_width, self.side), persistent=False)
        self.encoder = nn.ModuleList(EncoderBlock(config.encoder_width, config.encoder_heads, config.mlp_ratio)
                                     for _ in range(config.encoder_depth))
        self.decoder = nn.ModuleList(DecoderBlock(config.decoder_width, config.decoder_heads,
                                                  config.encoder_width, config.mlp_ratio)
                                     for _ in range(config.decoder_depth))
        # U-shaped pairing, spread uniformly over the encoder: decoder block j <- encoder block k_j.
        e, d = config.encoder_depth, config.decoder_depth
        self.pairing = [e - 1 - (j * e) // d for j in range(d)]
        self.norm_out = nn.LayerNorm(config.decoder_width)
        steps = int(np.log2(config.cell))
        layers: list[nn.Module] = []
        width = config.decoder_width
        for i in range(steps):
            out = channels if i == steps - 1 else max(channels, width // 2)
            layers.append(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2))
            if i < steps - 1:
                layers.append(nn.SiLU())
            width = out
        self.upsample = nn.Sequential(*layers)
        # Start as a no-op so that the U-Net trains from a sane state; the module learns its share.
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def tokens(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C * cell * cell), cells in row-major order."""
        cell = self.config.cell
        patches = nn.functional.unfold(feature, kernel_size=cell, stride=cell)  # (B, C*cell*cell, N)
        return patches.transpose(1, 2)

    def forward(self, feature: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``visible``: (B, N) bool, the same number of visible cells in every sample."""
        b = feature.shape[0]
        counts = visible.sum(1)
        if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
            raise ValueError("every sample needs the same, non-zero number of visible grid cells")
        tokens = self.tokens(feature)
        index = torch.nonzero(visible, as_tuple=False)[:, 1].view(b, -1)  # visible cells, sorted
        enc = self.embed_encoder(tokens) + self.pos_encoder
        enc = torch.gather(enc, 1, index[..., None].expand(-1, -1, enc.shape[-1]))  # masked cells never enter
        latents = []
        for block in self.encoder:
            enc = block(enc)
            latents.append(enc)
        dec = self.embed_decoder(tokens) + self.pos_decoder
        for block, k in zip(self.decoder, self.pairing):
            dec = block(dec, latents[k])
        dec = self.norm_out(dec).transpose(1, 2).reshape(b, -1, self.side, self.side)
        return self.upsample(dec)


class DiffusionNet(nn.Module):
    """x0-predicting U-Net with an optional MAE module before the bottleneck, or an optional encoder
    of the clean slice that conditions every residual block.

    The forward pass is MONAI's DiffusionModelUNet.forward with the MAE step inserted between the
    encoder and the middle block (MONAI offers residual hooks only after the middle block) and the
    condition joined to the time embedding.
    """

    def __init__(self, unet: UNetConfig, mae: MAEConfig | None = None, size: int = 96,
                 encoder: EncoderConfig | None = None):
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1, out_channels=1, channels=unet.channels,
            attention_levels=unet.attention, num_res_blocks=unet.res_blocks,
            num_head_channels=unet.head_channels, norm_num_groups=unet.norm_groups, resblock_updown=True,
        )
        levels = len(unet.channels)
        self.feature_side = size // 2 ** (levels - 1)
        if mae is not None and self.feature_side * 4 != size:
            raise ValueError("the MAE module works on the H/4 feature map: use 3 U-Net levels")
        self.mae = MAEModule(unet.channels[-1], self.feature_side, mae) if mae is not None else None
        self.condition = None
        if encoder is not None:
            # cDDPM: a condition as wide as the time embedding, concatenated to it.
            width = 4 * unet.channels[0]
            self.condition = ConditionEncoder(encoder, width)
            use_scale_shift(self.unet, 2 * width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, visible: torch.Tensor | None = None,
                clean: torch.Tensor | None = None) -> torch.Tensor:
        """``visible``: the grid cells the MAE module sees; ``clean``: the noise-free slice that a
        conditioned network encodes (ignored by the others)."""
        net = self.unet
        emb = net.time_embed(get_timestep_embedding(t, net.block_out_channels[0]).to(x.dtype))
        if self.condition is not None:
            if clean is None:
                raise ValueError("a conditioned network needs the clean slice")
            emb = torch.cat([emb, self.condition(clean).to(emb.dtype)], 1)
        h = net.conv_in(x)
        skips = [h]
        for block in net.down_blocks:
            h, residuals = block(hidden_states=h, temb=emb, context=None)
            skips.extend(residuals)
        if self.mae is not None:
            if visible is None:
                raise ValueError("the MAE module needs the visible grid cells")
            h = h + self.mae(h, visible)
        h = net.middle_block(hidden_states=h, temb=emb, context=None)
        for block in net.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=None)
            skips = skips[:-n]
        return net.out(h)


def visible_cells(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 1, H, W) patch mask -> (B, N) bool: grid cells not touched by the noised patch."""
    pooled = nn.functional.max_pool2d(mask, kernel_size=grid, stride=grid)
    return pooled.flatten(1) == 0
