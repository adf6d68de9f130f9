"""What things cost: parameters and GFLOPs per 96 x 96 forward pass of the named configurations, the
simplex noise's speed, the milliseconds of a training step (bench-train), and the seconds and peak
memory of `maediff detect` (bench-detect)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .methods import get_config, method_of
from .methods.base import ModelConfig


def _gflop(run) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def count(config: str | ModelConfig) -> dict:
    """Parameters (all, and of each part the method names) and GFLOP of one forward pass and of a
    slice's detection (the method's passes, plus its other passes per noise level), of a named
    configuration or of a configuration itself."""
    config = get_config(config) if isinstance(config, str) else config
    method = method_of(config.method)
    model = config.build().eval()

    def millions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    cost = method.cost(config, model)
    forward = _gflop(cost.forward)
    extra = sum(_gflop(run) for run in cost.extras)
    levels = len(config.diffusion.t_test)
    return {"name": config.name, "parameters_m": millions(model),
            "parts_m": {k: millions(v) for k, v in method.parts(model).items()},
            "positions": len(config.patch.positions()), "levels": levels, "passes": cost.passes, "work": cost.work,
            "gflop_per_forward": forward, "gflop_per_slice": cost.passes * forward + levels * extra,
            "sizes": method.sizes_text(config)}


def describe(config: str | ModelConfig) -> str:
    c = count(config)
    sizes = ", ".join(f"{label} {m:5.2f} M" for label, m in c["parts_m"].items())
    return (f"{c['name']:<16} {c['parameters_m']:6.2f} M parameters" + (f" ({sizes})" if sizes else "")
            + f", {c['gflop_per_forward']:6.1f} GFLOP per forward, {c['work']} = {c['gflop_per_slice']:6.1f} "
            f"GFLOP per slice; {c['sizes']}")


def noise_benchmark(slices: int = 256, repeats: int = 3) -> dict:
    """Slices per second of the batched torch simplex noise (CPU, and CUDA when present) next to
    the reference generator, opensimplex, one 6-octave field per slice."""
    from .diffusion import simplex_noise
    from .noise import SimplexConfig

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


# bench-detect's variants unless told: `maediff detect` on each runtime (runtime.py), torch the reference.
DEFAULT_VARIANTS = {"torch": "--runtime torch", "onnx": "--runtime onnx"}


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


def detect_benchmark(volume: Path, variants: dict[str, list[str]], out_dir: Path,
                     truth: Path | None = None) -> list[dict]:
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


def train_step_benchmark(name: str, batch_sizes: tuple[int, ...] = (8, 16, 32),
                         variants: tuple[str, ...] = TRAIN_VARIANTS, steps: int = 5,
                         device: torch.device | str = "cpu") -> Iterator[dict]:
    """Milliseconds per sample of one training step of configuration ``name`` (its last stage's
    objective, backward, the stage's optimiser) per batch size and variant: eager, channels_last
    memory, or torch.compile'd (its compilation timed apart). Slices are random and all brain; the
    cost does not depend on their content."""
    from .diffusion import Diffusion

    config, device = get_config(name), torch.device(device)
    stage = method_of(config.method).stages(config)[-1]
    diffusion = Diffusion(config.diffusion)
    for variant in variants:
        for batch in batch_sizes:
            torch.manual_seed(0)
            network = config.build().to(device)
            model = stage.trains(network).train()
            if variant == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            net = torch.compile(model) if variant == "compile" else model
            objective = stage.objective(network, diffusion)
            optimizer = stage.optimizer(model.parameters(), 1e-4)
            generator = torch.Generator().manual_seed(0)
            x0 = (torch.rand(batch, 1, config.patch.size, config.patch.size, generator=generator) * 2 - 1).to(device)
            if variant == "channels_last":
                x0 = x0.contiguous(memory_format=torch.channels_last)
            brain = torch.ones_like(x0)

            def step(net=net, objective=objective, optimizer=optimizer, x0=x0, brain=brain,
                     generator=generator) -> None:
                loss = objective(net, x0, brain, generator)
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
