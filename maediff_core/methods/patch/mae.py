"""MAEDiff's masked-autoencoder module (MAEDiff paper Sec. 3.3, Fig. 2) over the grid cells of the
U-Net encoder's feature map, and the network that inserts it before the bottleneck."""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.blocks import CrossAttentionBlock, MLPBlock, SABlock
from torch import nn

from ...diffusion_config import UNetConfig
from ...networks import DiffusionNet
from .config import MAEConfig


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
        # An exported graph holds no Python checks (onnx_export.py); its callers are this engine's.
        if not torch.compiler.is_compiling() and (not bool((counts == counts[0]).all()) or int(counts[0]) == 0):
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
        for block, k in zip(self.decoder, self.pairing, strict=True):
            dec = block(dec, latents[k])
        dec = self.norm_out(dec).transpose(1, 2).reshape(b, -1, self.side, self.side)
        return self.upsample(dec)


class MAEDiffNet(DiffusionNet):
    """The U-Net with the MAE module's output added to the encoder's feature map before the middle
    block (MONAI offers residual hooks only after it)."""

    def __init__(self, unet: UNetConfig, mae: MAEConfig, size: int = 96):
        super().__init__(unet)
        if self.feature_side(size) * 4 != size:
            raise ValueError("the MAE module works on the H/4 feature map: use 3 U-Net levels")
        self.mae = MAEModule(unet.channels[-1], self.feature_side(size), mae)

    def bottleneck_input(self, h: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
        """``model_kwargs["visible"]``: (B, N) bool, the grid cells the MAE module sees."""
        if model_kwargs.get("visible") is None:
            raise ValueError("the MAE module needs the visible grid cells")
        return h + self.mae(h, model_kwargs["visible"])

