"""Results back onto the input's own grid: lesion labels and their table from a model-space score.

Torch-free, so that the Slicer module's threshold slider can call it in Slicer's own Python.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .postprocess import PostprocessConfig, lesion_labels, lesion_table
from .preprocess import to_native


def native_lesions(score: np.ndarray, threshold: float, record: dict, heat: sitk.Image | None = None,
                   config: PostprocessConfig = PostprocessConfig()) -> tuple[sitk.Image, list[dict]]:
    """Lesion labels on the input grid (1 = largest) and their table, from a model-space score.

    Components are found in model space, where the protocol's size filter is defined, then put on
    the input grid and renumbered by their size there. ``heat``: the score already on the input
    grid (the written heatmap), which spares resampling it at every threshold.
    """
    heat = to_native(score, record) if heat is None else heat
    return labels_to_native(lesion_labels(score, threshold, config), heat, record)


def labels_to_native(labels: np.ndarray, heat: sitk.Image, record: dict) -> tuple[sitk.Image, list[dict]]:
    """Model-space lesion labels onto the input grid, renumbered by size, with their table
    (scores from ``heat``, the score already on the input grid)."""
    native = to_native(labels, record, labels=True)
    native = sitk.Cast(sitk.RelabelComponent(sitk.Cast(native, sitk.sitkUInt32), 0, True), sitk.sitkUInt16)
    return native, lesion_table(native, heat)
