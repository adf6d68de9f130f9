"""Commands that measure: bench-noise, bench-train, bench-detect, benchmark."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .options import DEVICES, given, positive_float, positive_int, scoring_label


def add_bench_noise(sub) -> None:
    p = sub.add_parser("bench-noise", help="slices per second of the simplex noise, torch vs opensimplex")
    p.add_argument("--slices", type=positive_int, default=256)
    p.set_defaults(func=run_bench_noise)


def run_bench_noise(args: argparse.Namespace) -> None:
    from ..profile import noise_benchmark

    for key, value in noise_benchmark(args.slices).items():
        print(f"{key:>18}: {value:.1f} slices/s" if isinstance(value, float) else f"{key:>18}: {value}")


def add_bench_train(sub) -> None:
    p = sub.add_parser("bench-train", help="milliseconds per sample of a training step, per batch size and variant")
    p.add_argument("--config", default="maediff-small")
    p.add_argument("--batch-size", type=positive_int, nargs="+", default=[8, 16, 32])
    p.add_argument("--variant", nargs="+", default=["eager", "channels_last", "compile"],
                   choices=["eager", "channels_last", "compile"])
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per row, after one warm-up step")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=run_bench_train)


def run_bench_train(args: argparse.Namespace) -> None:
    from ..device import pick_device
    from ..profile import train_step_benchmark

    device = pick_device(args.device)
    print(f"{args.config} on {device}, {os.cpu_count()} CPUs: ms per sample of a training step "
          f"(median of {args.steps})")
    for row in train_step_benchmark(args.config, tuple(args.batch_size), tuple(args.variant), args.steps, device):
        print(f"{row['variant']:>14} batch {row['batch']:3d}: {row['ms_per_sample']:7.1f} ms/sample "
              f"(first step {row['first_step_s']:.1f} s, {row['threads']} threads)", flush=True)


def add_bench_detect(sub) -> None:
    p = sub.add_parser("bench-detect", help="seconds per stage and peak memory of maediff detect, per set of options")
    p.add_argument("input", nargs="?", help="T2 volume (default: the bundled sample, scored against its lesion)")
    p.add_argument("--truth", help="the input's lesion mask: Dice of each variant's lesions")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OPTIONS"),
                   help='maediff detect options to time, e.g. --variant stride48 "--stride 48" (repeatable; '
                        'default: each runtime, torch and onnx); '
                        'the first is the reference')
    p.add_argument("-o", "--output", help="keep the detection outputs here (default: a temporary folder)")
    p.set_defaults(func=run_bench_detect)


def run_bench_detect(args: argparse.Namespace) -> None:
    import platform
    import shlex
    import tempfile

    from ..profile import DEFAULT_VARIANTS, detect_benchmark, detect_table
    from ..resources import sample_paths

    if args.input:
        volume, truth = Path(args.input), Path(args.truth) if args.truth else None
    else:
        volume, truth = sample_paths()
    variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
    with tempfile.TemporaryDirectory(prefix="maediff-bench-") as tmp:
        out = Path(args.output or tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = detect_benchmark(volume, {name: shlex.split(options) for name, options in variants.items()}, out, truth)
    print(f"{volume}, {platform.machine()} with {os.cpu_count()} CPUs\n")
    print(detect_table(rows))


def add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="all methods on the phantom benchmark at an equal training budget",
                       epilog="Defaults: maediff_core/benchmark.py, BenchmarkConfig.")
    p.add_argument("-o", "--output", default="benchmark")
    p.add_argument("--minutes", type=positive_float, help="training budget per method")
    p.add_argument("--healthy", type=positive_int, help="healthy phantoms")
    p.add_argument("--tumour", type=positive_int, help="tumour phantoms")
    p.add_argument("--ms", type=positive_int, help="MS phantoms")
    p.add_argument("--seed", type=int)
    p.add_argument("--methods", nargs="+")
    p.add_argument("--contrasts", nargs="*", help="contrast shifts of the tumour set to score (default: all; "
                                                  "none: leave the check out)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--slices-per-volume", type=positive_int)
    p.add_argument("--ema", type=float, help="EMA decay of every method's weights (0: none)")
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--eval-val", type=positive_int, help="at most this many validation volumes per lesion set")
    p.add_argument("--eval-test", type=positive_int, help="at most this many test volumes per lesion set")
    p.add_argument("--eval-healthy", type=positive_int, help="at most this many healthy test (and validation) volumes")
    p.add_argument("--protocol", choices=["reference", "ours"], help="evaluation protocol (default: reference)")
    p.add_argument("--scoring", type=lambda text: scoring_label(text).label,
                   help="every method's scoring: residual (the papers', default), mean:N or mhd:N[:raw]")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--readme", help="write the table into this Markdown file between the benchmark markers")
    p.set_defaults(func=run_benchmark)


def run_benchmark(args: argparse.Namespace) -> None:
    from ..benchmark import BenchmarkConfig, markdown_table, update_readme
    from ..benchmark import run_benchmark as benchmark

    config = BenchmarkConfig(**given(args, BenchmarkConfig))
    summary = benchmark(args.output, config)
    table = markdown_table(summary)
    print(table)
    if args.readme:
        update_readme(args.readme, table, args.command_line)


COMMANDS = (add_bench_noise, add_bench_train, add_bench_detect, add_benchmark)
