"""An MR DICOM series written from a SimpleITK volume, one file per slice, its geometry kept
(oblique grids included): what Slicer's DICOM database would hold for a scanned volume."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(image: sitk.Image, folder: str | Path, series: str = "1.2.826.0.1.3680043.2.1125.1.123456",
                       description: str = "T2 axial", echo: tuple[int, float] = (1, 90.0)) -> list[str]:
    """Files in instance order (slice k of ``image`` in file k), named after the series; ``echo`` is the
    echo number and time (ms)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = [direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]]
    spacing = image.GetSpacing()
    files = []
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in {
            "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0020|000e": series,
            "0020|000d": series + ".1", "0008|0018": f"{series}.2.{z + 1}", "0010|0020": "PHANTOM",
            "0008|0070": "MAEDiffAnomaly tests", "0008|0008": "ORIGINAL\\PRIMARY\\M\\NONE",
            "0020|0013": str(z + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation), "0018|0050": f"{spacing[2]:.4f}",
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}", "0020|0052": series + ".3",
            "0008|103e": description, "0018|0086": str(echo[0]), "0018|0081": f"{echo[1]:g}",
        }.items():
            slice_.SetMetaData(tag, value)
        path = str(folder / f"{series[-6:]}-{echo[0]}-{z:03d}.dcm")
        writer.SetFileName(path)
        writer.Execute(slice_)
        files.append(path)
    return files
