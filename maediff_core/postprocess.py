"""Anomaly score map -> lesion candidates, as in the reference protocol (docs/reference.md).

The same functions serve detection, evaluation and the Slicer module's threshold slider, so the
lesions a user sees are exactly the ones the numbers were measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class PostprocessConfig:
    mask_erosions: int = 3  # docs/reference.md: brain mask eroded 3 times, per axial slice
    median_size: int = 5  # docs/reference.md: 3-D median filter k = 5
    min_component_voxels: int = 8  # docs/reference.md: components of 7 voxels or fewer removed


def erode_slices(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Erode a (z, y, x) mask within each axial slice (the reference works slice by slice)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    for _ in range(iterations):
        # A 2-D cross (radius 0 along z): no coupling between slices. Voxels beyond the array
        # count as background, as in a plain binary erosion.
        image = sitk.BinaryErode(image, [1, 1, 0], sitk.sitkCross, 0, 1, False)
    return sitk.GetArrayFromImage(image).astype(bool)


def smooth_scores(residual: np.ndarray, mask: np.ndarray,
                  config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Residual -> anomaly score: restricted to the eroded brain, then median filtered (no re-masking)."""
    score = residual.astype(np.float32) * erode_slices(mask, config.mask_erosions)
    if config.median_size > 1:
        radius = config.median_size // 2
        # The reference's scipy median_filter extends the volume by reflection (b a | a b c), as
        # MirrorPad does; sitk.Median alone extends it by repetition (a a | a b c), which changes the
        # first and last axial slices of a brain cropped to its box.
        padded = sitk.MirrorPad(sitk.GetImageFromArray(score), [radius] * 3, [radius] * 3)
        filtered = sitk.GetArrayFromImage(sitk.Median(padded, [radius] * 3))
        score = np.ascontiguousarray(filtered[radius:-radius, radius:-radius, radius:-radius])
    return score


def lesion_labels(score: np.ndarray, threshold: float,
                  config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Binarise at ``threshold`` (``score > threshold``) and label connected components (26-connected),
    dropping small ones; label 1 is the largest lesion, 2 the next, and so on.

    The reference drops components whose ``filled_area`` (scikit-image: holes filled with a full 3x3x3
    structure) is at most 7. A hole under that structure needs all 26 neighbours of a voxel in the
    component, so a component of at most 7 voxels has none and its voxel count is its filled area."""
    binary = sitk.GetImageFromArray((score > threshold).astype(np.uint8))
    components = sitk.ConnectedComponent(binary, True)
    relabelled = sitk.RelabelComponent(components, minimumObjectSize=config.min_component_voxels,
                                       sortByObjectSize=True)
    return sitk.GetArrayFromImage(relabelled).astype(np.int32)


def lesion_table(labels: sitk.Image, score: sitk.Image) -> list[dict]:
    """Per lesion: voxels, volume (mL), max and mean score, centroid in RAS millimetres. Images on
    one grid (the score's geometry is taken to be the labels')."""
    label_image = sitk.Cast(labels, sitk.sitkUInt32)
    score_image = sitk.Cast(score, sitk.sitkFloat32)
    score_image.CopyInformation(label_image)
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(label_image, score_image)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    rows = []
    for label in sorted(stats.GetLabels()):
        x, y, z = stats.GetCentroid(label)  # LPS physical point
        count = int(stats.GetNumberOfPixels(label))
        rows.append({
            "label": int(label),
            "voxels": count,
            "volume_ml": round(count * voxel_ml, 4),
            "max_score": float(stats.GetMaximum(label)),
            "mean_score": float(stats.GetMean(label)),
            "centroid_ras_mm": [round(-x, 2), round(-y, 2), round(z, 2)],
        })
    return rows
