"""The brain mask against the truth (docs/brain-mask.md): healthy validation phantoms rendered with their
skull and without it (the same subject: one seed), the skull heads also with the benchmark's contrast
shifts and with 4.5 mm slices. Each mask is compared on the atlas grid, where preprocessing makes it,
with the phantom's true brain carried there by the same registration.

    python scripts/mask_study.py [--cases 6] [--method atlas] [--figure FIGURE.png]

Prints one Markdown table row per variant (means over the cases) and the seconds the mask took.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from maediff_core.atlas import Atlas
from maediff_core.augment import CONTRAST_SHIFTS
from maediff_core.metrics import mask_agreement
from maediff_core.phantom import PhantomConfig, make_phantom
from maediff_core.preprocess import PreprocessConfig, in_atlas_space

VALIDATION_SEEDS = range(1000, 1100)  # never a seed of the benchmark's sets (0, 1, 2 and their cases)
MEASURES = ("dice", "mean_surface_mm", "p95_surface_mm", "extra_ml", "missing_ml")


def shifted(image: sitk.Image, name: str) -> sitk.Image:
    """The whole head with a contrast shift of the benchmark (augment.CONTRAST_SHIFTS) on 0..1 intensities."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    top = float(array.max())
    out = CONTRAST_SHIFTS[name].apply(array / top, np.ones(array.shape, bool)) * top
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def variants(seed: int, atlas: Atlas) -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """name -> (image, true brain) of one subject."""
    skull = make_phantom("healthy", seed, PhantomConfig(skull_probability=1.0), atlas)
    stripped = make_phantom("healthy", seed, PhantomConfig(skull_probability=0.0), atlas)
    thick = make_phantom("healthy", seed, PhantomConfig(skull_probability=1.0, slice_mm=4.5), atlas)
    cases = {"skull-stripped": (stripped.image, stripped.brain), "with skull": (skull.image, skull.brain),
             "with skull, 4.5 mm slices": (thick.image, thick.brain)}
    for name in CONTRAST_SHIFTS:
        cases[f"with skull, {name}"] = (shifted(skull.image, name), skull.brain)
    return cases


def measure(image: sitk.Image, truth: sitk.Image, config: PreprocessConfig, atlas: Atlas) -> tuple[dict, object]:
    start = time.perf_counter()
    head = in_atlas_space(image, config, atlas)
    seconds = time.perf_counter() - start
    truth_in_atlas = sitk.Resample(truth, atlas.template, head.transform, sitk.sitkNearestNeighbor, 0)
    return {**mask_agreement(head.brain, sitk.And(truth_in_atlas, head.view)), "seconds": seconds}, head


def figure(image: sitk.Image, truth: sitk.Image, config: PreprocessConfig, atlas: Atlas, path: str) -> None:
    """The mask's edge (red) and the true brain's (green) over three axial slices of a head with a skull."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, head = measure(image, truth, config, atlas)
    truth_in_atlas = sitk.Resample(truth, atlas.template, head.transform, sitk.sitkNearestNeighbor, 0)
    arrays = [sitk.GetArrayFromImage(x) for x in (head.image, head.brain, truth_in_atlas)]
    brain_slices = np.flatnonzero(arrays[2].any((1, 2)))
    picks = [int(np.percentile(brain_slices, q)) for q in (30, 55, 80)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, z in zip(axes, picks, strict=True):
        ax.imshow(arrays[0][z], cmap="gray", origin="lower")
        ax.contour(arrays[2][z], [0.5], colors="lime", linewidths=1.0)
        ax.contour(arrays[1][z], [0.5], colors="red", linewidths=1.0)
        ax.set_title(f"atlas slice {z}")
        ax.axis("off")
    fig.suptitle(f"brain mask ({config.mask_method}, red) and true brain (green), a head with its skull")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--method", default="atlas")
    parser.add_argument("--figure")
    args = parser.parse_args()
    atlas = Atlas.load()
    config = replace(PreprocessConfig(), mask_method=args.method)
    rows: dict[str, list[dict]] = {}
    for seed in VALIDATION_SEEDS[:args.cases]:
        for name, (image, truth) in variants(seed, atlas).items():
            result, _ = measure(image, truth, config, atlas)
            rows.setdefault(name, []).append(result)
            print(f"{seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    print(f"\n| {args.method} mask, {args.cases} cases | Dice | mean surface mm | 95 % surface mm | non-brain in mL "
          "| brain cut mL | s |\n|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        cells = [np.mean([r[k] for r in results]) for k in (*MEASURES, "seconds")]
        print(f"| {name} | {cells[0]:.3f} | " + " | ".join(f"{c:.2f}" for c in cells[1:]) + " |")
    if args.figure:
        skull = make_phantom("healthy", VALIDATION_SEEDS[0], PhantomConfig(skull_probability=1.0), atlas)
        figure(skull.image, skull.brain, config, atlas, args.figure)


if __name__ == "__main__":
    main()
