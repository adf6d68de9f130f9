"""Reading and writing MRI volumes with their geometry.

SimpleITK does the I/O (NIfTI, NRRD, MHA and DICOM series folders); this module adds the checks
that turn a silently wrong input into a specific error, and atomic writes so that a killed process
never leaves a half-written output under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Spacing outside this range (mm) is a header error, not an MRI: 0.05 mm to 20 mm per voxel.
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0


class VolumeError(ValueError):
    """An input volume that cannot be used, with the reason in the message."""


def volume_suffix(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def case_name(path: str | Path) -> str:
    """File name without its volume suffix (``sub01.nii.gz`` -> ``sub01``)."""
    p = Path(path)
    suffix = volume_suffix(p)
    return p.name[: -len(suffix)] if suffix else p.name


def read_volume(path: str | Path) -> sitk.Image:
    """Read a 3-D scalar volume (file or DICOM series folder) and validate it."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            if not volume_suffix(path) and path.suffix.lower() not in (".dcm", ""):
                raise VolumeError(
                    f"{path}: unsupported file type; expected one of {', '.join(VOLUME_SUFFIXES)}"
                    " or a DICOM series folder"
                )
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise VolumeError(f"{path}: cannot be read as an image ({first_line})") from err
    validate_volume(image, str(path))
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise VolumeError(
            f"{folder}: folder holds {len(series)} DICOM series; pass a folder with exactly one"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def validate_volume(image: sitk.Image, name: str = "volume") -> None:
    """Raise :class:`VolumeError` unless ``image`` is a finite, non-constant 3-D scalar volume."""
    if image.GetDimension() != 3:
        raise VolumeError(f"{name}: expected a 3-D volume, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{name}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}"
            " (a 4-D, vector or RGB image)"
        )
    size = image.GetSize()
    if min(size) < 2:
        raise VolumeError(f"{name}: size {size} has a dimension below 2 voxels (a 2-D image?)")
    spacing = image.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise VolumeError(
            f"{name}: implausible voxel spacing {tuple(round(s, 4) for s in spacing)} mm"
            f" (expected {MIN_SPACING_MM}..{MAX_SPACING_MM} mm)"
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise VolumeError(f"{name}: direction matrix is not orthonormal")
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise VolumeError(f"{name}: contains NaN or infinite voxels")
    if values.min() == values.max():
        raise VolumeError(f"{name}: all voxels have the same value {values.flat[0]}")


def write_volume(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` atomically: to a temporary name in the same folder, then rename."""
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise VolumeError(f"{path}: unsupported output type; use one of {', '.join(VOLUME_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, compress)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def geometry_of(image: sitk.Image) -> dict:
    """The grid of ``image`` as plain JSON-ready values."""
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def reference_image(geometry: dict, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """An empty image on the grid described by :func:`geometry_of`."""
    image = sitk.Image([int(s) for s in geometry["size"]], pixel_type)
    image.SetSpacing([float(s) for s in geometry["spacing"]])
    image.SetOrigin([float(o) for o in geometry["origin"]])
    image.SetDirection([float(d) for d in geometry["direction"]])
    return image


def image_from_array(array: np.ndarray, geometry: dict | sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array on the grid of ``geometry`` (a dict or an image)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if isinstance(geometry, sitk.Image):
        image.CopyInformation(geometry)
        return image
    expected = tuple(int(s) for s in geometry["size"])
    if image.GetSize() != expected:
        raise VolumeError(f"array of size {image.GetSize()} does not fit the grid {expected}")
    image.SetSpacing([float(s) for s in geometry["spacing"]])
    image.SetOrigin([float(o) for o in geometry["origin"]])
    image.SetDirection([float(d) for d in geometry["direction"]])
    return image


def resample_isotropic(image: sitk.Image, spacing_mm: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample to isotropic voxels in the image's own orientation (physical space unchanged)."""
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    size = np.maximum(np.round(old_size * old_spacing / spacing_mm), 1).astype(int)
    # Keep the field of view centred: the first new voxel centre moves by half the size change.
    shift = (old_size * old_spacing - size * spacing_mm) / 2.0 + (spacing_mm - old_spacing) / 2.0
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ shift
    ref = reference_image(
        {"size": size.tolist(), "spacing": [spacing_mm] * 3, "origin": origin.tolist(),
         "direction": list(image.GetDirection())}
    )
    return sitk.Resample(image, ref, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
