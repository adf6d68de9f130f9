"""Reading and writing MRI volumes with their geometry.

SimpleITK does the I/O (NIfTI, NRRD, MHA and DICOM series folders); this module adds the checks
that turn a silently wrong input into a specific error, and writes that are checked before they are
renamed into place (``files``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .files import VOLUME_SUFFIXES, atomic_path, volume_suffix
from .nifti_header import check_nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")  # a single file, or a header/image pair

# Per axis, spacing outside this range (mm) is a header error, not an in-vivo brain MRI (clinical
# thick-slice T2 stays under 8 mm with its gap; research scans go down to 0.2 mm).
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 10.0
# DICOM slice positions may wander by rounding in their text; a gap beyond this is a missing slice.
SLICE_GAP_TOLERANCE = 0.1  # fraction of the series' median spacing


def read_volume(path: str | Path, warnings: list[str] | None = None, series: str | None = None) -> sitk.Image:
    """Read a 3-D scalar volume (file or DICOM series folder) and validate it; what its header leaves
    to a guess (a NIfTI file without orientation, say) is appended to ``warnings``. ``series`` picks one
    series of a DICOM folder that holds several, by its UID or its description."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series)
        else:
            if series is not None:
                raise InputError(f"{path}: a series was chosen ({series}), but this is a file, not a DICOM folder")
            if not volume_suffix(path) and path.suffix.lower() not in (".dcm", ""):
                raise InputError(
                    f"{path}: unsupported file type; expected one of {', '.join(VOLUME_SUFFIXES)}"
                    " or a DICOM series folder"
                )
            image = sitk.ReadImage(str(path))
            if volume_suffix(path) in NIFTI_SUFFIXES:
                found = check_nifti(path, image)
                if warnings is not None:
                    warnings.extend(found)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise InputError(f"{path}: cannot be read as an image ({first_line})") from err
    validate_volume(image, str(path))
    return image


def _read_dicom_series(folder: Path, chosen: str | None = None) -> sitk.Image:
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    every = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in uids}
    described = {uid: series_description(names[0]) for uid, names in every.items()}
    # Never silently the first of several: a study folder holds T1, T2 and FLAIR side by side.
    matching = [uid for uid in uids if chosen in (uid, None) or chosen.casefold() == described[uid].casefold()]
    if len(matching) != 1:
        listing = "; ".join(f"{uid} '{described[uid]}' ({len(every[uid])} files)" for uid in uids)
        what = f"{len(matching) or 'no'} series match {chosen!r}" if chosen else f"{len(uids)} DICOM series"
        raise InputError(f"{folder}: {what}: {listing}. Choose one with --series and its UID or description")
    files = every[matching[0]]
    check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def series_description(file: str) -> str:
    """A DICOM file's Series Description (0008,103E), empty where it has none."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""


def check_slice_positions(folder: Path, files: Sequence[str]) -> None:
    """What ITK only warns about: slices missing from a series, spaced unevenly, or of different sizes
    or orientations. The reader would stack them at one spacing, and the geometry would be wrong."""
    header = sitk.ImageFileReader()
    sizes, orientations, positions, echoes = set(), set(), [], set()
    for name in files:
        header.SetFileName(name)
        header.ReadImageInformation()
        tags = {tag: header.GetMetaData(tag).strip() if header.HasMetaDataKey(tag) else "" for tag in
                ("0028|0010", "0028|0011", "0020|0037", "0020|0032", "0018|0086", "0018|0081")}
        echoes.add((tags["0018|0086"], tags["0018|0081"]))  # echo number and echo time
        sizes.add((tags["0028|0010"], tags["0028|0011"]))
        try:
            orientation = tuple(round(float(v), 3) for v in tags["0020|0037"].split("\\"))
            position = [float(v) for v in tags["0020|0032"].split("\\")]
        except ValueError:  # an empty or garbled tag
            orientation, position = (), []
        orientations.add(orientation if len(orientation) == 6 else None)
        positions.append(position if len(position) == 3 else None)
    if len(echoes) > 1:
        times = ", ".join(sorted(f"{t or '?'} ms" for _, t in echoes))
        raise InputError(f"{folder}: the series holds {len(echoes)} echoes (echo times {times}): a multi-echo "
                          "series; export the echo to use (the late, T2-weighted one) as a series of its own")
    if len(sizes) > 1:
        raise InputError(f"{folder}: the series' slices have different sizes {sorted(sizes)} (rows, columns)")
    if len(orientations) > 1 or None in orientations or None in positions:
        raise InputError(f"{folder}: the series' slices do not share one orientation and position grid"
                          " (a localizer or a multi-stack series?)")
    if len(files) < 2:
        return
    row, column = np.array(next(iter(orientations))).reshape(2, 3)
    depth = np.sort(np.array(positions) @ np.cross(row, column))
    gaps = np.diff(depth)
    spacing = float(np.median(gaps))
    if spacing <= 0:
        raise InputError(f"{folder}: several slices share one position (duplicated slices?)")
    uneven = np.flatnonzero(np.abs(gaps - spacing) > SLICE_GAP_TOLERANCE * spacing)
    if uneven.size:
        k = int(uneven[0])
        raise InputError(f"{folder}: slices missing or unevenly spaced: {gaps[k]:.2f} mm between slices {k + 1} "
                          f"and {k + 2} where the series is spaced {spacing:.2f} mm ({uneven.size} such gap(s))")


def validate_volume(image: sitk.Image, name: str = "volume") -> None:
    """Raise :class:`InputError` unless ``image`` is a finite, non-constant 3-D scalar volume."""
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3-D volume, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}"
            " (a 4-D, vector or RGB image)"
        )
    size = image.GetSize()
    if min(size) < 2:
        raise InputError(f"{name}: size {size} has a dimension below 2 voxels (a 2-D image?)")
    spacing = image.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputError(
            f"{name}: implausible voxel spacing {tuple(round(s, 4) for s in spacing)} mm"
            f" (expected {MIN_SPACING_MM}..{MAX_SPACING_MM} mm)"
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(f"{name}: direction matrix is not orthonormal")
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InputError(f"{name}: contains NaN or infinite voxels")
    if values.min() == values.max():
        raise InputError(f"{name}: all voxels have the same value {values.flat[0]}")


def write_volume(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` atomically, and only after it reads back as written: SimpleITK does not report
    a short write (a full disk), and would later read the truncated file without complaint."""
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise InputError(f"{path}: unsupported output type; use one of {', '.join(VOLUME_SUFFIXES)}")
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
        try:
            written = sitk.ReadImage(str(tmp))  # kept alive while its array view is compared
            complete = np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image),
                                      equal_nan=True)
        except RuntimeError:
            complete = False
        if not complete:
            raise InputError(f"{path}: the file did not read back as written (is the disk full?)")
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
        raise InputError(f"array of size {image.GetSize()} does not fit the grid {expected}")
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
