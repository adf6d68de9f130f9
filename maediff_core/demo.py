"""``maediff demo``: the bundled demo model on the bundled sample case, end to end, with timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .detect import DetectConfig, detect_file, text_progress
from .errors import CardError
from .figures import detection_figure
from .files import case_name, write_text_atomic
from .metrics import dice
from .modelfile import model_paths, rewrite_card
from .phantom import make_phantom
from .resources import default_model_path, sample_paths
from .runtime import load_runtime
from .timing import Laps
from .volume_io import read_volume, write_volume

SAMPLE_SEED = 20261122  # the bundled sample case (resources.SAMPLE_NAME) is this tumour phantom


def write_sample(folder: str | Path) -> tuple[Path, Path]:
    """Generate the sample case into ``folder`` (how ``Resources/samples`` was made); returns the
    volume and lesion paths, named as the bundled ones."""
    sample = make_phantom("tumour", SAMPLE_SEED)
    volume, lesion = (Path(folder) / p.name for p in sample_paths())
    return write_volume(sample.image, volume), write_volume(sample.seg, lesion)


def run_demo(out_dir: str | Path, model_path: str | Path | None = None, device: str = "auto",
             config: DetectConfig = DetectConfig(), record: bool = False, runtime: str = "auto") -> dict:
    """The model (default: the bundled one) on the bundled sample: its outputs, a figure, and the
    Dice of its lesions against the sample's known lesion; with ``record``, that result goes into
    the model's card (its ``sample`` metric), where the tests and the README read it."""
    out_dir = Path(out_dir)
    model_path = model_path or default_model_path()
    if not model_paths(model_path)[1].is_file():
        raise CardError(f"{model_path}: no model there; `make demo-model` builds the bundled demo model")
    lap = Laps()
    input_path, truth_path = sample_paths()
    image, truth = read_volume(input_path), read_volume(truth_path) > 0
    lap("sample")
    networks, card = load_runtime(model_path, runtime, device)
    lap("load_model")
    result = detect_file(input_path, out_dir, networks, card, config, progress=text_progress)
    lap("detect")  # its stages are timed inside
    case = out_dir / case_name(input_path)
    found = read_volume(case / "lesions.nii.gz")
    score = dice(sitk.GetArrayFromImage(found) > 0, sitk.GetArrayFromImage(truth))
    detection_figure(image, read_volume(case / "reconstruction.nii.gz"), read_volume(case / "heatmap.nii.gz"),
                     found, truth, out_dir / "demo.png")
    lap("figure")
    timings = {"sample": lap.seconds["sample"], "load_model": lap.seconds["load_model"], **result["timings_s"],
               "figure": lap.seconds["figure"]}
    summary = {"sample": str(input_path), "model": card.config.name, "dice": score,
               "truth_ml": float(np.count_nonzero(sitk.GetArrayFromImage(truth)) * np.prod(image.GetSpacing()) / 1000),
               "lesion_count": result["lesion_count"], "timings_s": timings}
    write_text_atomic(json.dumps(summary, indent=1) + "\n", out_dir / "demo.json")
    for stage, seconds in timings.items():
        print(f"{stage:>14}: {seconds:6.1f} s")
    print(f"{'total':>14}: {sum(timings.values()):6.1f} s")
    print(f"Dice against the known lesion: {100 * score:.1f} % ({result['lesion_count']} lesion candidates, "
          f"truth {summary['truth_ml']:.1f} mL)")
    print(f"outputs in {out_dir}/ (figure: {out_dir / 'demo.png'})")
    if record:
        card.metrics["sample"] = {"data": "the bundled sample (Resources/samples, its known lesion)", "n": 1,
                                  "dice": {"mean": round(score, 4), "std": 0.0},
                                  "lesions": {"mean": result["lesion_count"], "std": 0.0},
                                  "command": "maediff demo --record"}
        print(f"recorded in {rewrite_card(card, model_path)}")
    return summary
