"""Detection on heads with their skull and without it (docs/brain-mask.md): held-out phantoms (seeds 2000
on: neither the benchmark's nor the mask study's) rendered twice, the same subject with its skull and
skull-stripped, each detected by the bundled model at its default operating point with every mask method
asked for.

    python scripts/skull_candidates.py [--kind healthy] [--cases 8] [--first-seed 2000]
                                       [--methods atlas atlas-deformable] [--renders skull stripped]
                                       [-o runs/skull-candidates]

Prints one Markdown row per subject and method and the means. Healthy subjects: the candidates (all
false), and a mask that suits heads with their skull gives as many with the skull as without it. Tumour
subjects (``--kind tumour``): the candidates, the Dice of the lesions against the true tumour, and the
share of the tumour inside the brain mask (a mask that cuts the tumour away hides it from detection).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from maediff_core.atlas import Atlas
from maediff_core.metrics import dice
from maediff_core.phantom import PhantomConfig, make_phantom
from maediff_core.preprocess import to_model
from maediff_core.volume_io import read_volume, write_volume

FIRST_TEST_SEED = 2000
RENDERS = {"skull": 1.0, "stripped": 0.0}  # PhantomConfig.skull_probability


def render(kind: str, seed: int, name: str, folder: Path, atlas: Atlas) -> Path:
    """The subject's image (and, with a lesion, its segmentation beside it as ``-seg``), written once."""
    path = folder / f"{kind}{seed}-{name}.nii.gz"
    if not path.is_file():
        phantom = make_phantom(kind, seed, PhantomConfig(skull_probability=RENDERS[name]), atlas)
        if phantom.seg is not None:
            write_volume(phantom.seg, seg_path(path))
        write_volume(phantom.image, path)
    return path


def seg_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".nii.gz", "-seg.nii.gz"))


def measure(path: Path, result: Path) -> dict:
    """Candidates, their mL and the preprocessing time; against a segmentation beside the input, the Dice
    and the share of the lesion inside the brain mask."""
    summary = json.loads((result / "lesions.json").read_text())
    row = {"candidates": summary["lesion_count"], "ml": sum(lesion["volume_ml"] for lesion in summary["lesions"]),
           "seconds": summary["timings_s"]["preprocess"]}
    if seg_path(path).is_file():
        seg = read_volume(seg_path(path))
        found = sitk.GetArrayFromImage(read_volume(result / "lesions.nii.gz")) > 0
        row["dice"] = dice(found, sitk.GetArrayFromImage(seg) > 0)
        record = json.loads((result / "model_space" / "record.json").read_text())
        truth = to_model(seg, record, labels=True) > 0
        mask = sitk.GetArrayFromImage(read_volume(result / "model_space" / "mask.nii.gz")) > 0
        row["kept"] = float((truth & mask).sum() / max(truth.sum(), 1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["healthy", "tumour"], default="healthy")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=FIRST_TEST_SEED)
    parser.add_argument("--methods", nargs="+", default=["atlas", "atlas-deformable"])
    parser.add_argument("--renders", nargs="+", choices=list(RENDERS), default=list(RENDERS))
    parser.add_argument("-o", "--output", default="runs/skull-candidates")
    args = parser.parse_args()
    out = Path(args.output)
    atlas = Atlas.load()
    seeds = range(args.first_seed, args.first_seed + args.cases)
    inputs = {(seed, name): render(args.kind, seed, name, out / "inputs", atlas)
              for seed in seeds for name in args.renders}
    found: dict[tuple[str, int, str], dict] = {}
    for method in args.methods:
        folder = out / method
        todo = [p for p in inputs.values() if not (folder / p.name.removesuffix(".nii.gz") / "lesions.json").is_file()]
        if todo:
            subprocess.run([sys.executable, "-m", "maediff_core.cli", "detect", "--mask-method", method,
                            *map(str, todo), "-o", str(folder)], check=True)
        for (seed, name), path in inputs.items():
            found[method, seed, name] = measure(path, folder / path.name.removesuffix(".nii.gz"))
    tumour = args.kind == "tumour"

    def cell(row: dict) -> str:
        text = f"{row['candidates']} ({row['ml']:.1f})"
        return text + (f", Dice {100 * row['dice']:.1f}, kept {100 * row['kept']:.0f} %" if tumour else "")

    what = "candidates (mL), Dice %, tumour inside the mask" if tumour else "candidates (mL)"
    print(f"\n| subject | mask | {' | '.join(f'{what}, {name}' for name in args.renders)} |"
          f"\n|---|---|{'---|' * len(args.renders)}")
    for method in args.methods:
        for seed in seeds:
            print(f"| {seed} | {method} | {' | '.join(cell(found[method, seed, name]) for name in args.renders)} |")
    print(f"\n| mask | render | mean candidates | {'mean Dice % | least kept % | ' if tumour else ''}"
          f"preprocessing s |\n|---|---|---|{'---|---|' if tumour else ''}---|")
    for method in args.methods:
        for name in args.renders:
            rows = [found[method, seed, name] for seed in seeds]
            quality = (f"{100 * np.mean([r['dice'] for r in rows]):.1f} | "
                       f"{100 * min(r['kept'] for r in rows):.0f} | ") if tumour else ""
            print(f"| {method} | {name} | {np.mean([r['candidates'] for r in rows]):.2f} | {quality}"
                  f"{np.mean([r['seconds'] for r in rows]):.1f} |")
        if set(RENDERS) <= set(args.renders):
            gaps = [found[method, seed, "skull"]["candidates"] - found[method, seed, "stripped"]["candidates"]
                    for seed in seeds]
            print(f"| {method} | skull - stripped | within one on {sum(abs(g) <= 1 for g in gaps)} of "
                  f"{args.cases} |{' | |' if tumour else ''} |")


if __name__ == "__main__":
    main()
