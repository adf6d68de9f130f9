"""False candidates on normal heads with their skull and without it (docs/brain-mask.md): held-out healthy
phantoms (seeds 2000 on: neither the benchmark's nor the mask study's) rendered twice, the same subject
with its skull and skull-stripped, each detected by the bundled model at its default operating point
with every mask method asked for.

    python scripts/skull_candidates.py [--cases 8] [--first-seed 2000] [--methods atlas atlas-deformable]
                                       [-o runs/skull-candidates]

Prints one Markdown row per subject and method and the means: a mask that suits heads with their skull
gives as many candidates with the skull as without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from maediff_core.atlas import Atlas
from maediff_core.phantom import PhantomConfig, make_phantom
from maediff_core.volume_io import write_volume

FIRST_TEST_SEED = 2000
RENDERS = {"skull": 1.0, "stripped": 0.0}  # PhantomConfig.skull_probability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=FIRST_TEST_SEED)
    parser.add_argument("--methods", nargs="+", default=["atlas", "atlas-deformable"])
    parser.add_argument("-o", "--output", default="runs/skull-candidates")
    args = parser.parse_args()
    out = Path(args.output)
    atlas = Atlas.load()
    seeds = range(args.first_seed, args.first_seed + args.cases)
    inputs = []
    for seed in seeds:
        for render, probability in RENDERS.items():
            path = out / "inputs" / f"healthy{seed}-{render}.nii.gz"
            if not path.is_file():
                write_volume(make_phantom("healthy", seed, PhantomConfig(skull_probability=probability), atlas).image,
                             path)
            inputs.append(path)
    found: dict[tuple[str, str], tuple[int, float, float]] = {}
    for method in args.methods:
        folder = out / method
        todo = [p for p in inputs if not (folder / p.name.removesuffix(".nii.gz") / "lesions.json").is_file()]
        if todo:
            subprocess.run([sys.executable, "-m", "maediff_core.cli", "detect", "--mask-method", method,
                            *map(str, todo), "-o", str(folder)], check=True)
        for path in inputs:
            summary = json.loads((folder / path.name.removesuffix(".nii.gz") / "lesions.json").read_text())
            ml = sum(lesion["volume_ml"] for lesion in summary["lesions"])
            found[method, path.name.removesuffix(".nii.gz")] = (summary["lesion_count"], ml,
                                                                 summary["timings_s"]["preprocess"])
    print("\n| subject | mask | candidates with skull (mL) | candidates skull-stripped (mL) | difference |"
          "\n|---|---|---|---|---|")
    for method in args.methods:
        gaps = []
        for seed in seeds:
            skull, stripped = (found[method, f"healthy{seed}-{render}"] for render in RENDERS)
            gaps.append(skull[0] - stripped[0])
            print(f"| {seed} | {method} | {skull[0]} ({skull[1]:.1f}) | {stripped[0]} ({stripped[1]:.1f}) "
                  f"| {gaps[-1]:+d} |")
        rows = [found[method, f"healthy{seed}-{render}"] for seed in seeds for render in RENDERS]
        means = [np.mean([r[0] for r in rows[i::2]]) for i in (0, 1)]
        seconds = np.mean([r[2] for r in rows])
        print(f"| mean of {args.cases} | {method} | {means[0]:.2f} | {means[1]:.2f} | within one on "
              f"{sum(abs(g) <= 1 for g in gaps)} of {args.cases}; preprocessing {seconds:.1f} s |")


if __name__ == "__main__":
    main()
