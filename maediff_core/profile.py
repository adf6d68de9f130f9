"""Size and cost of the named configurations: parameters and GFLOPs per 96 x 96 forward pass."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .diffusion import patch_masks, random_corners
from .models import get_config
from .networks import visible_cells


def count(name: str) -> dict:
    config = get_config(name)
    model = config.build().eval()
    x = torch.zeros(1, 1, config.patch.size, config.patch.size)
    mask = patch_masks(random_corners(1, config.patch, torch.Generator().manual_seed(0)), config.patch)
    visible = visible_cells(mask, config.patch.grid) if config.mae is not None else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500]), visible)
    mae = sum(p.numel() for p in model.mae.parameters()) if model.mae is not None else 0
    return {"name": name, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "mae_parameters_m": mae / 1e6, "gflop_per_forward": counter.get_total_flops() / 1e9,
            "positions": len(config.patch.positions())}


def describe(name: str) -> str:
    c = count(name)
    return (f"{c['name']:<18} {c['parameters_m']:7.2f} M parameters (MAE {c['mae_parameters_m']:5.2f} M), "
            f"{c['gflop_per_forward']:7.1f} GFLOP per forward, {c['positions']:2d} patch positions")
