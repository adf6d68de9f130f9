"""The measurements behind the input checks (docs/input-checks.md), on the data of scripts/demo_model.sh:

1. contrast: the tissue contrasts of the healthy validation fold (with the benchmark's T2 contrast
   shifts) and of T1-, FLAIR- and PD-weighted phantoms, and what the check says of each;
2. slices: tumour and healthy validation phantoms acquired again at 3, 4.5 and 6 mm slices (the same
   subject and pose), detected by the bundled model at its default operating point;
3. field of view: a healthy validation subject off-centre in a 400 mm field of view, and with a neck
   and shoulders below the head.

Validation volumes only: the warning's threshold is chosen from this table.
Usage: python scripts/input_check_study.py [WORK [SECTION ...]] (default: benchmark, every section; prints
Markdown tables).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from maediff_core.atlas import Atlas
from maediff_core.augment import CONTRAST_SHIFTS
from maediff_core.cache import load_prepared, select, split_of
from maediff_core.detect import DetectConfig, detect_file, preprocess_settings
from maediff_core.errors import InputError
from maediff_core.input_check import contrast_warnings, measure
from maediff_core.metrics import dice
from maediff_core.phantom import PhantomConfig, make_phantom, off_centre, with_neck
from maediff_core.preprocess import preprocess
from maediff_core.resources import default_model_path
from maediff_core.runtime import load_runtime
from maediff_core.volume_io import write_volume

WORK = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark")
SEEDS = {"healthy": 0, "tumour": 1}  # scripts/demo_model.sh's phantom sets
CASES = 2  # of each kind's validation volumes
THICKNESS = (None, 3.0, 4.5, 6.0)  # None: as generated (1 to 3 mm)


def seed_of(kind: str, case: str) -> int:
    return SEEDS[kind] * 100003 + int(case[3:])  # phantom.write_case


def validation_cases(kind: str, fold: int) -> list[str]:
    rows = split_of(WORK / "prepared" / kind)
    return select(rows, "val", fold if kind == "healthy" else None)[:CASES]


def contrast_table(card, atlas: Atlas, fold: int) -> None:
    print("| volumes | n | CSF - WM | GM - WM | CSF - GM | the check says |\n|---|---|---|---|---|---|")
    healthy = load_prepared(WORK / "prepared" / "healthy", select(split_of(WORK / "prepared" / "healthy"), "val", fold))
    sets = {"T2, healthy validation fold": healthy}
    sets |= {f"T2, {name}": shift.cases(healthy) for name, shift in CONTRAST_SHIFTS.items()}
    prep = preprocess_settings(card)
    for weighting in ("T1", "FLAIR", "PD"):
        images = [make_phantom(kind, 500 + i, PhantomConfig(weighting=weighting)).image
                  for i, kind in enumerate(("healthy", "tumour", "healthy"))]
        sets[f"{weighting} phantoms"] = [preprocess(image, prep) for image in images]
    for name, cases in sets.items():
        measured = [measure(c.image, c.mask, atlas) for c in cases]
        verdicts = []
        for m in measured:
            try:
                verdicts.append("warning" if contrast_warnings(m, card.inputs.get("contrast")) else "accepted")
            except InputError as err:
                verdicts.append(str(err).split(":")[0].removeprefix("this looks like "))
        spans = [f"{min(m.differences[k] for m in measured):.2f} to {max(m.differences[k] for m in measured):.2f}"
                 for k in ("csf_wm", "gm_wm", "csf_gm")]
        said = ", ".join(f"{v} ({verdicts.count(v)})" for v in dict.fromkeys(verdicts))
        print(f"| {name} | {len(cases)} | {' | '.join(spans)} | {said} |", flush=True)


def detect_phantom(model, card, image: sitk.Image, seg: sitk.Image | None, out: Path) -> dict:
    """One `maediff detect` at the card's default point: candidates, their mL, and with a truth the
    Dice and the candidates that touch no lesion; the preprocessing record and the warnings."""
    path = write_volume(image, out / "input.nii.gz")
    summary = detect_file(path, out, model, card, DetectConfig(), preprocess_settings(card))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "input" / "lesions.nii.gz")))
    record = json.loads((out / "input" / "model_space" / "record.json").read_text())
    row = {"candidates": summary["lesion_count"], "ml": sum(lesion["volume_ml"] for lesion in summary["lesions"]),
           "warnings": summary["warnings"], "record": record}
    if seg is not None:
        truth = sitk.GetArrayFromImage(seg) > 0
        row["dice"] = dice(labels > 0, truth, both_empty=1.0)
        row["false"] = sum(1 for k in np.unique(labels[labels > 0]) if not truth[labels == k].any())
    return row


def slice_table(model, card, fold: int) -> None:
    print("\n| slices | tumour Dice % | candidates per tumour volume | per healthy volume (mL) | warned |\n"
          "|---|---|---|---|---|")
    for thickness in THICKNESS:
        rows = {"healthy": [], "tumour": []}
        for kind in rows:
            for case in validation_cases(kind, fold):
                phantom = make_phantom(kind, seed_of(kind, case), PhantomConfig(slice_mm=thickness))
                with tempfile.TemporaryDirectory() as folder:
                    rows[kind].append(detect_phantom(model, card, phantom.image, phantom.seg, Path(folder)))
        tumour, healthy = rows["tumour"], rows["healthy"]
        warned = sum(any("slices of" in w for w in r["warnings"]) for r in tumour + healthy)
        print(f"| {thickness or 'as generated (1-3 mm)'} | {100 * np.mean([r['dice'] for r in tumour]):.1f} | "
              f"{np.mean([r['candidates'] for r in tumour]):.1f} ({np.mean([r['false'] for r in tumour]):.1f} false) | "
              f"{np.mean([r['candidates'] for r in healthy]):.1f} ({np.mean([r['ml'] for r in healthy]):.1f}) | "
              f"{warned} of {len(tumour + healthy)} |", flush=True)


def fov_table(model, card, fold: int) -> None:
    print("\n| field of view | registration MI | brain in view | candidates | warnings |\n|---|---|---|---|---|")
    case = validation_cases("healthy", fold)[0]
    phantom = make_phantom("healthy", seed_of("healthy", case), PhantomConfig(skull_probability=1.0))
    image = sitk.DICOMOrient(sitk.Cast(phantom.image, sitk.sitkFloat32), "LPS")  # index z runs up the head
    for name, variant in (("as generated", image), ("off-centre, 400 mm", off_centre(image)),
                          ("with neck and shoulders", with_neck(image))):
        with tempfile.TemporaryDirectory() as folder:
            try:
                row = detect_phantom(model, card, variant, None, Path(folder))
            except InputError as err:
                print(f"| {name} | refused: {err} | | | |", flush=True)
                continue
        record = row["record"]
        print(f"| {name} | {record['registration_mi']:.2f} | {100 * record['brain_in_view']:.0f} % | "
              f"{row['candidates']} ({row['ml']:.1f} mL) | {'; '.join(row['warnings']) or 'none'} |", flush=True)


def main() -> None:
    model, card = load_runtime(default_model_path(), "torch", "cpu")
    fold = card.training.get("fold", 0)
    sections = sys.argv[2:] or ["contrast", "slices", "fov"]
    if "contrast" in sections:
        contrast_table(card, Atlas.load(), fold)
    if "slices" in sections:
        slice_table(model, card, fold)
    if "fov" in sections:
        fov_table(model, card, fold)


if __name__ == "__main__":
    main()
