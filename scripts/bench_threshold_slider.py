"""Seconds per release of the Results threshold slider on a 256^3 input grid: the scene code's
``update_threshold`` (relabel in model space, labels onto the input grid, segments updated in place)
on the real MRML library of slicer-core.

Usage: python scripts/bench_threshold_slider.py RESULT_DIR   (a ``maediff detect`` result folder)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MAEDiffAnomaly"))

from maediff_core.preprocess import to_native  # noqa: E402
from maediff_core.writeback import native_lesions  # noqa: E402
from MAEDiffAnomalyLib import scene as scene_lib  # noqa: E402


def main(result_dir: Path, size: int = 256, repeats: int = 5) -> None:
    record = json.loads((result_dir / "model_space" / "record.json").read_text())
    score = sitk.GetArrayFromImage(sitk.ReadImage(str(result_dir / "model_space" / "heatmap.nii.gz")))
    summary = json.loads((result_dir / "lesions.json").read_text())
    grid = dict(record["native_grid"])  # the same field of view, sampled at size^3
    extent = np.array(grid["size"]) * np.array(grid["spacing"])
    grid.update(size=[size] * 3, spacing=(extent / size).tolist())
    record = {**record, "native_grid": grid}
    heat = to_native(score, record)
    scene = scene_lib.headless_scene()
    folder = result_dir.parent / "bench-slider"
    folder.mkdir(exist_ok=True)
    sitk.WriteImage(heat, str(folder / "heat.nii.gz"))
    node = scene_lib.read_volume_node(scene, folder / "heat.nii.gz", "input")
    heatmap = scene_lib.read_volume_node(scene, folder / "heat.nii.gz", "heatmap")
    heatmap.CreateDefaultDisplayNodes()
    lesions = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    lesions.SetReferenceImageGeometryParameterFromVolumeNode(node)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    placement = scene_lib.Placement.of(scene, node)
    results = scene_lib.Results(placement, heatmap, None, lesions, table, result_dir, score, heat, record,
                                summary["threshold"], float(score.max()))
    threshold = summary["threshold"]
    scene_lib.update_threshold(scene, results, threshold)
    times, counts = [], []
    for i in range(repeats):
        value = threshold * (1.25 if i % 2 == 0 else 1.0)
        start = time.perf_counter()
        rows = scene_lib.update_threshold(scene, results, value)
        times.append(time.perf_counter() - start)
        counts.append(len(rows))
    start = time.perf_counter()
    native_lesions(score, threshold, record, heat)
    labels_only = time.perf_counter() - start
    print(f"grid {size}^3, {counts} lesions: {np.mean(times):.2f} s per release "
          f"(min {min(times):.2f}, max {max(times):.2f}); relabelling alone {labels_only:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
