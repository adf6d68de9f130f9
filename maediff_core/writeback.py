"""Results back onto the input's own grid: lesion labels and their table from a model-space score.

Torch-free, so that the Slicer module's threshold slider can call it in Slicer's own Python.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .postprocess import PostprocessConfig, lesion_labels, lesion_table
from .preprocess import to_native


def native_lesions(score: np.ndarray, threshold: float, record: dict,
                   config: PostprocessConfig = PostprocessConfig()) -> tuple[sitk.Image, list[dict]]:
    """Lesion labels on the input grid (1 = largest) and their table, from a model-space score.

    Components are found in model space, where the protocol's size filter is defined, then put on
    the input grid and renumbered by their size there.
    """
    labels = lesion_labels(score, threshold, config)
    native = to_native(labels, record, labels=True)
    native = sitk.Cast(sitk.RelabelComponent(sitk.Cast(native, sitk.sitkUInt32), 0, True), sitk.sitkUInt16)
    heat = to_native(score, record)
    return native, lesion_table(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(heat), native)
