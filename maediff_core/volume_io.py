"""Reading and writing MRI volumes with their geometry.

SimpleITK does the I/O (NIfTI, NRRD, MHA and DICOM series folders); this module adds the checks
that turn a silently wrong input into a specific error, and atomic writes so that a killed process
never leaves a half-written output under the final name.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


def output_folders(inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """One result folder per input, named after its case. Inputs that share a case name (``a/T2.nii.gz``
    and ``b/T2.nii.gz``) would overwrite each other: refused before any work."""
    folders: dict[str, Path] = {}
    for path in inputs:
        name = case_name(path)
        if name in folders:
            raise VolumeError(f"{folders[name]} and {path} would both write {Path(out_dir) / name}: "
                              "give them different -o folders")
        folders[name] = Path(path)
    return [Path(out_dir) / name for name in folders]


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
            if volume_suffix(path) in (".nii", ".nii.gz"):
                check_nifti_voxels(path)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise VolumeError(f"{path}: cannot be read as an image ({first_line})") from err
    validate_volume(image, str(path))
    return image


# NIfTI datatype codes of floating-point voxels (nifti1.h) and their numpy types.
NIFTI_FLOATS = {16: "f4", 64: "f8"}


def check_nifti_voxels(path: Path) -> None:
    """What SimpleITK's NIfTI reader hides: a file cut short (the missing voxels read as 0) and NaN or
    infinite voxels (read as 0). Reads the header (NIfTI-1 or -2) and the raw voxel bytes."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, OSError, zlib.error) as err:  # a gzip stream that stops before its end
        raise VolumeError(f"{path}: the file is cut short or damaged ({err})") from err
    for order in "<>":
        size = int(np.frombuffer(data[:4], f"{order}i4")[0]) if len(data) >= 4 else 0
        if size in (348, 540):
            break
    else:
        raise VolumeError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if size == 348:
        dims = np.frombuffer(data, f"{order}i2", 8, 40).astype(np.int64)
        datatype, bitpix = np.frombuffer(data, f"{order}i2", 2, 70)
        offset = int(np.frombuffer(data, f"{order}f4", 1, 108)[0])
    else:
        datatype, bitpix = np.frombuffer(data, f"{order}i2", 2, 12)
        dims = np.frombuffer(data, f"{order}i8", 8, 16)
        offset = int(np.frombuffer(data, f"{order}i8", 1, 168)[0])
    count = int(np.prod(dims[1:1 + dims[0]]))
    expected = offset + count * int(bitpix) // 8
    if len(data) < expected:
        raise VolumeError(f"{path}: the file is cut short ({len(data)} of {expected} bytes): "
                          "copy it again from its source")
    if int(datatype) in NIFTI_FLOATS:
        voxels = np.frombuffer(data, f"{order}{NIFTI_FLOATS[int(datatype)]}", count, offset)
        bad = count - int(np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise VolumeError(f"{path}: {bad} voxels are NaN or infinite")


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to. When the block ends without error the file gets
    the permissions the user's umask gives new files (mkstemp makes them 0600) and is renamed to
    ``path``; on any error it is removed, so nothing incomplete ever carries the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written (a file, read-only, no permission) before the
    minutes of work whose results it would receive."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise VolumeError(f"{folder}: cannot write results there ({err.strerror or err})") from None


@contextmanager
def folder_as_a_set(folder: Path) -> Iterator[Path]:
    """A temporary sibling folder to write a result into. When the block ends without error it
    replaces ``folder`` by renames, so a reader finds the old result or the new one, never a mix (a
    kill between the renames leaves only a hidden ``.old-`` copy). On error it is removed. Leftovers of
    killed runs are swept first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.parent.glob(f".{folder.name}.partial-*"), *folder.parent.glob(f".{folder.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        if folder.exists():
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            if old.exists():
                os.rename(old, folder)  # the earlier result back under its name
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_volume(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` atomically, and only after it reads back as written: SimpleITK does not report
    a short write (a full disk), and would later read the truncated file without complaint."""
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise VolumeError(f"{path}: unsupported output type; use one of {', '.join(VOLUME_SUFFIXES)}")
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
        try:
            written = sitk.ReadImage(str(tmp))  # kept alive while its array view is compared
            complete = np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image),
                                      equal_nan=True)
        except RuntimeError:
            complete = False
        if not complete:
            raise VolumeError(f"{path}: the file did not read back as written (is the disk full?)")
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically; a short write raises (OSError)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
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
