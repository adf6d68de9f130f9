"""What things cost: parameters and GFLOPs per 96 x 96 forward pass of the named configurations, the
simplex noise's speed, the milliseconds of a training step (bench-train), and the seconds and peak
memory of `maediff detect` (bench-detect)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .diffusion import patch_masks, random_corners
from .models import get_config
from .networks import visible_cells


def _gflop(run) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def count(name: str) -> dict:
    """Parameters (all, and of the MAE module, cDDPM's encoder or MAD-AD's autoencoder) and GFLOP per
    forward; MAD-AD's forward is one denoiser step, and a slice adds one encoding and two decodings."""
    config = get_config(name)
    model = config.build().eval()
    x = torch.zeros(1, 1, config.patch.size, config.patch.size)

    def millions(module: torch.nn.Module | None) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6 if module is not None else 0.0

    result = {"name": name, "parameters_m": millions(model), "positions": len(config.patch.positions()),
              "levels": len(config.diffusion.t_test), "mae_parameters_m": 0.0, "encoder_parameters_m": 0.0,
              "autoencoder_parameters_m": 0.0, "gflop_per_slice_extra": 0.0}
    if config.latent is not None:
        z = model.encode(x)
        # One denoiser pass per DDIM step, from each starting step of the ensemble.
        result.update(autoencoder_parameters_m=millions(model.autoencoder), passes=sum(config.diffusion.t_test),
                      gflop_per_forward=_gflop(lambda: model.denoiser(z, torch.tensor([1]))),
                      gflop_per_slice_extra=_gflop(lambda: model.encode(x)) + 2 * _gflop(lambda: model.decode(z)))
        return result
    mask = patch_masks(random_corners(1, config.patch, torch.Generator().manual_seed(0)), config.patch)
    visible = visible_cells(mask, config.patch.grid) if config.mae is not None else None
    result.update(mae_parameters_m=millions(model.mae), encoder_parameters_m=millions(model.condition),
                  passes=result["positions"] * result["levels"],
                  gflop_per_forward=_gflop(lambda: model(x, torch.tensor([500]), visible, clean=x)))
    return result


def parts(name: str) -> str:
    """The sizes that distinguish a configuration: U-Net widths and blocks, MAE and encoder depths."""
    config = get_config(name)
    text = f"U-Net {'/'.join(map(str, config.unet.channels))} x {config.unet.res_blocks} blocks"
    if config.mae is not None:
        text += f"; MAE {config.mae.encoder_depth} x {config.mae.encoder_width} / {config.mae.decoder_depth} x " \
                f"{config.mae.decoder_width}"
    if config.encoder is not None:
        e = config.encoder
        text += f"; ResNet {e.block} {'-'.join(map(str, e.layers))}, {e.widths[0]}..{e.widths[-1]} -> {e.features}"
    if config.latent is not None:
        a = config.latent.autoencoder
        side = config.patch.size // a.downsampling
        text += (f"; autoencoder {'/'.join(map(str, a.channels))} x {a.res_blocks} blocks -> "
                 f"{a.latent_channels} x {side} x {side}")
    return text


def describe(name: str) -> str:
    c = count(name)
    per_slice = c["passes"] * c["gflop_per_forward"] + c["levels"] * c["gflop_per_slice_extra"]
    sizes = ", ".join(f"{label} {c[key]:5.2f} M" for label, key in
                      (("MAE", "mae_parameters_m"), ("encoder", "encoder_parameters_m"),
                       ("autoencoder", "autoencoder_parameters_m")) if c[key])
    work = (f"{c['passes']} DDIM steps from {c['levels']} t_test + autoencoder" if c["autoencoder_parameters_m"]
            else f"{c['positions']:2d} positions x {c['levels']} t_test")
    return (f"{c['name']:<16} {c['parameters_m']:6.2f} M parameters" + (f" ({sizes})" if sizes else "")
            + f", {c['gflop_per_forward']:6.1f} GFLOP per forward, {work} = {per_slice:6.1f} "
            f"GFLOP per slice; {parts(name)}")


def noise_benchmark(slices: int = 256, repeats: int = 3) -> dict:
    """Slices per second of the batched torch simplex noise (CPU, and CUDA when present) next to
    the reference generator, opensimplex, one 6-octave field per slice."""
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


# bench-detect's variants unless told: `maediff detect` as it ran before CPU_BATCH and the bundled model's
# stride 48 (the reference of the ratios), with the smaller batch alone (the same outputs), and as it runs.
DEFAULT_VARIANTS = {"earlier": "--batch-size 32 --stride 16", "stride 16": "--stride 16", "default": ""}


def timed_detect(volume: Path, out: Path, options: list[str]) -> dict:
    """One ``maediff detect`` process as a user starts it: wall seconds (start-up and imports
    included), its peak resident memory and its own per-stage seconds."""
    import json
    import os
    import subprocess
    import sys

    from .files import case_name

    command = [sys.executable, "-m", "maediff_core.cli", "detect", str(volume), "-o", str(out), "--progress", "json",
               *options]
    with open(out.parent / f"{out.name}.log", "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, not all children's
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"maediff detect {' '.join(options)} failed; see {log.name}")
    summary = json.loads((out / case_name(volume) / "lesions.json").read_text())
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"wall_s": wall, "peak_mb": peak, "stages_s": summary["timings_s"], "lesions": summary["lesion_count"],
            "folder": out / case_name(volume)}


def detect_benchmark(volume: Path, variants: dict[str, list[str]], out_dir: Path, truth: Path | None = None) -> list[dict]:
    """Each variant (name -> extra ``maediff detect`` options) run once on ``volume``; seconds per
    stage, peak memory, time against the first variant, the largest heatmap difference from it and,
    with ``truth``, the lesions' Dice."""
    import numpy as np
    import SimpleITK as sitk

    from .metrics import dice

    def array(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    lesion = array(truth) > 0 if truth is not None else None
    rows, first_heat = [], None
    for name, options in variants.items():
        row = {"variant": name, "options": " ".join(options), **timed_detect(volume, out_dir / name, options)}
        heat = array(row["folder"] / "heatmap.nii.gz")
        first_heat = heat if first_heat is None else first_heat
        row["ratio"] = row["wall_s"] / (rows[0] if rows else row)["wall_s"]
        row["heatmap_max_diff"] = float(np.abs(heat - first_heat).max())
        if lesion is not None:
            row["dice"] = dice(array(row["folder"] / "lesions.nii.gz") > 0, lesion, both_empty=1.0)
        rows.append(row)
    return rows


def detect_table(rows: list[dict]) -> str:
    stages = list(rows[0]["stages_s"])
    lines = ["| variant | options | " + " | ".join(f"{s} s" for s in stages)
             + " | other s | total s | vs first | peak MB | lesions | Dice % | max heatmap diff |",
             "|---" * (len(stages) + 9) + "|"]
    for row in rows:
        other = row["wall_s"] - sum(row["stages_s"].values())  # start-up, imports, model loading, writing
        dice = f"{100 * row['dice']:.1f}" if "dice" in row else "-"
        lines.append(f"| {row['variant']} | {row['options'] or '(defaults)'} | "
                     + " | ".join(f"{row['stages_s'][s]:.1f}" for s in stages)
                     + f" | {other:.1f} | {row['wall_s']:.1f} | {row['ratio']:.2f} | {row['peak_mb']:.0f} | "
                       f"{row['lesions']} | {dice} | {row['heatmap_max_diff']:.2g} |")
    return "\n".join(lines) + "\n"


TRAIN_VARIANTS = ("eager", "channels_last", "compile")


def train_step_benchmark(name: str, batch_sizes: tuple[int, ...] = (8, 16, 32), variants: tuple[str, ...] = TRAIN_VARIANTS,
                         steps: int = 5, device: torch.device | str = "cpu") -> Iterator[dict]:
    """Milliseconds per sample of one training step of configuration ``name`` (Algorithm 1's loss,
    backward, Adam) per batch size and variant: eager, channels_last memory, or torch.compile'd (its
    compilation timed apart). Slices are random; the cost does not depend on their content."""
    from .diffusion import Diffusion
    from .train import training_step

    config, device = get_config(name), torch.device(device)
    diffusion = Diffusion(config.diffusion)
    for variant in variants:
        for batch in batch_sizes:
            torch.manual_seed(0)
            model = config.build().to(device).train()
            if variant == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            net = torch.compile(model) if variant == "compile" else model
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            generator = torch.Generator().manual_seed(0)
            x0 = (torch.rand(batch, 1, config.patch.size, config.patch.size, generator=generator) * 2 - 1).to(device)
            if variant == "channels_last":
                x0 = x0.contiguous(memory_format=torch.channels_last)

            def step() -> None:
                loss = training_step(net, x0, None, generator, config, diffusion)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            start = time.perf_counter()
            step()  # compilation, allocator and cache warm-up
            first = time.perf_counter() - start
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            yield {"variant": variant, "batch": batch, "ms_per_sample": 1000 * median / batch,
                   "first_step_s": first, "threads": torch.get_num_threads()}
