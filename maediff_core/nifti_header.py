"""What a NIfTI header says about a volume, read from the header itself (NIfTI-1 or -2, one file or a
.hdr/.img pair): SimpleITK reads a zero voxel size as 1 mm, flips the slice axis for a negative one,
puts a volume without orientation at the origin with identity axes, and takes one of a qform and an
sform that disagree, all without a word. These checks refuse what cannot be trusted and name what
was assumed.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

# Where the qform and the sform may differ (mm, at the volume's corners) before they disagree: more
# than float32 rounding of the affine, less than any real misplacement.
AGREEMENT_MM = 0.5
# Where SimpleITK's geometry matches one of them (mm at the corners).
MATCH_MM = 0.01
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class NiftiHeader:
    version: int  # 1 or 2 (0: an Analyze 7.5 header, which holds no orientation)
    order: str  # byte order of the header and the voxels: "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]  # pixdim[0] (qfac) .. pixdim[7]
    vox_offset: int
    qform_code: int
    sform_code: int
    quatern: tuple[float, float, float]  # b, c, d
    qoffset: tuple[float, float, float]
    srow: tuple[tuple[float, ...], ...]  # the sform's three rows of four

    @property
    def voxels(self) -> int:
        return int(np.prod(self.dims))

    def qform(self) -> np.ndarray:
        """The qform's 4 x 4 voxel -> RAS affine (NIfTI-1 "method 2")."""
        b, c, d = self.quatern
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        affine = np.eye(4)
        affine[:3, :3] = rotation @ np.diag([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]])
        affine[:3, 3] = self.qoffset
        return affine

    def sform(self) -> np.ndarray:
        """The sform's 4 x 4 voxel -> RAS affine (NIfTI-1 "method 3")."""
        return np.vstack([np.array(self.srow), [0.0, 0.0, 0.0, 1.0]])


def header_file(path: Path) -> Path:
    """The file that holds the header: the .hdr of a .hdr/.img pair, else the file itself."""
    return path.with_suffix(".hdr") if path.suffix.lower() == ".img" else path


def read_bytes(path: Path) -> bytes:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (EOFError, OSError, zlib.error) as err:  # a gzip stream that stops before its end
        raise InputError(f"{path}: the file is cut short or damaged ({err})") from err


def parse_header(data: bytes, path: Path) -> NiftiHeader:
    """The fields of a NIfTI-1 (348 bytes), NIfTI-2 (540 bytes) or Analyze 7.5 header, either byte order."""
    for order in "<>":
        size = int(np.frombuffer(data[:4], f"{order}i4")[0]) if len(data) >= 4 else 0
        if size in (348, 540) and len(data) >= size:
            break
    else:
        raise InputError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")

    def read(kind: str, count: int, offset: int) -> tuple:
        return tuple(np.frombuffer(data, f"{order}{kind}", count, offset).tolist())

    if size == 540:
        dim = read("i8", 8, 16)
        return NiftiHeader(2, order, dim[1:1 + dim[0]], read("i2", 1, 12)[0], read("i2", 1, 14)[0], read("f8", 8, 104),
                           read("i8", 1, 168)[0], read("i4", 1, 344)[0], read("i4", 1, 348)[0], read("f8", 3, 352),
                           read("f8", 3, 376), (read("f8", 4, 400), read("f8", 4, 432), read("f8", 4, 464)))
    dim = read("i2", 8, 40)
    version = 1 if data[344:347] in (b"n+1", b"ni1") else 0
    return NiftiHeader(version, order, dim[1:1 + dim[0]], read("i2", 1, 70)[0], read("i2", 1, 72)[0], read("f4", 8, 76),
                       int(read("f4", 1, 108)[0]), read("i2", 1, 252)[0] if version else 0,
                       read("i2", 1, 254)[0] if version else 0, read("f4", 3, 256), read("f4", 3, 268),
                       (read("f4", 4, 280), read("f4", 4, 296), read("f4", 4, 312)))


def check_voxel_sizes(header: NiftiHeader, path: Path) -> None:
    """A zero, negative or non-finite voxel size is refused: SimpleITK reads 0 as 1 mm and a negative
    size as a flip of that axis, so the volume's size or handedness would be a guess."""
    for axis in range(1, min(4, len(header.dims) + 1)):
        size = header.pixdim[axis]
        if not np.isfinite(size) or size == 0:
            raise InputError(f"{path}: the voxel size is unknown: the NIfTI header's pixdim[{axis}] is {size} "
                             "(SimpleITK would read it as 1 mm); write the volume again with its voxel size")
        if size < 0:
            raise InputError(f"{path}: the NIfTI header's pixdim[{axis}] is {size:g}, a negative voxel size: the "
                             "standard keeps sizes positive and the slice direction in qfac (pixdim[0]), and "
                             "readers disagree on which way this axis runs (SimpleITK flips it); write the volume "
                             "again with a standard header")


def corners(header: NiftiHeader) -> np.ndarray:
    """The voxel indices (4, 8) of the volume's corners, homogeneous."""
    extent = [max(n - 1, 0) for n in (list(header.dims[:3]) + [1, 1, 1])[:3]]
    grid = np.array(np.meshgrid(*[[0, e] for e in extent], indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def distance_mm(a: np.ndarray, b: np.ndarray, header: NiftiHeader) -> float:
    """The largest distance between where two affines put the volume's corners."""
    points = corners(header)
    return float(np.linalg.norm((a @ points - b @ points)[:3], axis=0).max())


def simpleitk_affine(image: sitk.Image) -> np.ndarray:
    """SimpleITK's voxel -> RAS affine of ``image`` (its geometry is in LPS)."""
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_FROM_RAS @ np.array(image.GetOrigin())
    return affine


def orientation_warnings(header: NiftiHeader, image: sitk.Image) -> list[str]:
    """What the header leaves to a guess about where the volume lies, and what was assumed."""
    if not (header.qform_code or header.sform_code):
        kind = "an Analyze 7.5 header" if header.version == 0 else "the NIfTI header (qform_code and sform_code 0)"
        return [f"no orientation in {kind}: read with the voxel axes taken as pointing left, posterior and "
                "superior from an origin at 0 mm; if the scan is not stored that way, left and right may be swapped "
                "in the results"]
    if header.qform_code and header.sform_code:
        apart = distance_mm(header.qform(), header.sform(), header)
        if apart > AGREEMENT_MM:
            used = simpleitk_affine(image)
            taken = ("the sform" if distance_mm(used, header.sform(), header) < MATCH_MM
                     else "the qform" if distance_mm(used, header.qform(), header) < MATCH_MM else "neither")
            return [f"the NIfTI header's qform and sform disagree: they place the volume up to {apart:.1f} mm apart; "
                    f"read with {taken} (codes {header.sform_code} and {header.qform_code}): check which one the "
                    "scanner's export meant"]
    return []


def check_nifti(path: Path, image: sitk.Image) -> list[str]:
    """Refuse a NIfTI (or Analyze) file whose header cannot be trusted or whose voxels SimpleITK reads
    wrongly (cut short, NaN or infinite); returns warnings about what its header leaves to a guess."""
    data = read_bytes(header_file(path))
    header = parse_header(data, path)
    check_voxel_sizes(header, path)
    check_voxels(header, data if header_file(path) == path else read_bytes(path.with_suffix(".img")), path)
    return orientation_warnings(header, image)


# NIfTI datatype codes of floating-point voxels (nifti1.h) and their numpy types.
NIFTI_FLOATS = {16: "f4", 64: "f8"}


def check_voxels(header: NiftiHeader, data: bytes, path: Path) -> None:
    """What SimpleITK's reader hides in the voxel data: a file cut short (the missing voxels read as
    0) and NaN or infinite voxels (read as 0). ``data``: the file that holds the voxels."""
    offset = header.vox_offset
    expected = offset + header.voxels * int(header.bitpix) // 8
    if len(data) < expected:
        raise InputError(f"{path}: the file is cut short ({len(data)} of {expected} bytes): copy it again from its "
                         "source")
    if int(header.datatype) in NIFTI_FLOATS:
        voxels = np.frombuffer(data, f"{header.order}{NIFTI_FLOATS[int(header.datatype)]}", header.voxels, offset)
        bad = header.voxels - int(np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise InputError(f"{path}: {bad} voxels are NaN or infinite")
