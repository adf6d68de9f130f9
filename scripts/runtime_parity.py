"""Detection on torch and on ONNX Runtime, compared on the same preprocessed volumes
(docs/detection-speed.md).

Preprocessing is done once per volume (its registration is multithreaded and moves by a few 1e-4
between runs, which would hide the runtimes' own difference). Then, at the model card's operating
point, each runtime detects with the noise it draws from the seed (the same numpy fields on both):
the largest difference of the reconstructions and of the heatmaps (which the Mahalanobis scoring
amplifies where the reconstructions agree with one another), the lesion voxels that differ, and each
runtime's lesions and their Dice against the truth on the input grid.

    python scripts/runtime_parity.py               # the bundled sample
    T=benchmark/data/tumour/PHT003; python scripts/runtime_parity.py $T/PHT003_t2.nii.gz:$T/PHT003_seg.nii.gz
"""

from __future__ import annotations

import sys
import time

import numpy as np
import SimpleITK as sitk

from maediff_core.detect import DetectConfig, anomaly_score, preprocess_settings, reconstruct_samples
from maediff_core.metrics import dice
from maediff_core.postprocess import lesion_labels
from maediff_core.preprocess import preprocess, to_native
from maediff_core.resources import default_model_path, sample_paths
from maediff_core.runtime import OnnxRuntime, load_runtime
from maediff_core.volume_io import read_volume
from maediff_core.writeback import labels_to_native


def compare(volume: str, truth: str) -> dict:
    on_torch, card = load_runtime(default_model_path(), "torch", "cpu")
    config = DetectConfig()
    threshold, post = config.decision_threshold(card), config.lesion_config(card)
    prepared = preprocess(read_volume(volume), preprocess_settings(card))
    lesion = sitk.GetArrayFromImage(read_volume(truth)) > 0
    row = {"volume": volume}
    outputs = {}
    for runtime in (on_torch, OnnxRuntime(card)):
        start = time.perf_counter()
        samples = reconstruct_samples(runtime, card, prepared.image, prepared.mask, config)
        seconds = time.perf_counter() - start
        score = anomaly_score(prepared.image, samples, prepared.mask, card.scoring)
        labels = lesion_labels(score, threshold, post)
        heat = sitk.Cast(to_native(score, prepared.record), sitk.sitkFloat32)
        native, table = labels_to_native(labels, heat, prepared.record)
        outputs[runtime.name] = (samples, score, labels > 0)
        row[runtime.name] = {"reconstruct_s": round(seconds, 1), "lesions": len(table),
                             "dice": round(100 * dice(sitk.GetArrayFromImage(native) > 0, lesion), 1)}
    (torch_samples, torch_score, torch_lesions), (onnx_samples, onnx_score, onnx_lesions) = outputs.values()
    row["reconstruction_max_diff"] = float(np.abs(onnx_samples - torch_samples).max())
    row["heatmap_max_diff"] = float(np.abs(onnx_score - torch_score).max())
    row["lesion_voxels_differ"] = int((onnx_lesions != torch_lesions).sum())
    return row


def main() -> None:
    pairs = [arg.split(":") for arg in sys.argv[1:]] or [[str(p) for p in sample_paths()]]
    for volume, truth in pairs:
        print(compare(volume, truth), flush=True)


if __name__ == "__main__":
    main()
