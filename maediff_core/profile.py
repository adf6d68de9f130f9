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


def noise_benchmark(slices: int = 256, repeats: int = 3) -> dict:
    """Slices per second of the batched torch simplex noise (CPU, and CUDA when present) next to
    the reference generator, opensimplex, one 6-octave field per slice."""
    import time

    from .noise import SimplexConfig, simplex_noise

    def best_rate(fn, n: int) -> float:
        fn()  # warm-up (JIT compilation, CUDA context)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return n / min(times)

    generator = torch.Generator().manual_seed(0)
    result = {"torch_cpu": best_rate(lambda: simplex_noise((slices, 1, 96, 96), generator), slices)}
    if torch.cuda.is_available():
        def on_gpu():
            simplex_noise((slices, 1, 96, 96), generator, device="cuda")
            torch.cuda.synchronize()

        result["torch_cuda"] = best_rate(on_gpu, slices)
    try:
        import numpy as np
        import opensimplex
    except ImportError:
        return result
    config, coords = SimplexConfig(), np.arange(96, dtype=float)

    def reference(n: int = 32) -> None:
        for seed in range(n):
            opensimplex.seed(seed)
            field, amplitude, frequency = 0.0, 1.0, config.frequency
            for _ in range(config.octaves):
                field = field + amplitude * opensimplex.noise2array(coords * frequency, coords * frequency)
                amplitude *= config.persistence
                frequency *= 2

    try:
        import numba  # noqa: F401  (opensimplex compiles itself with numba when it is installed)

        result["opensimplex_numba"] = True
    except ImportError:
        result["opensimplex_numba"] = False
    result["opensimplex_cpu"] = best_rate(reference, 32)
    return result
