"""NIfTI headers that cannot be trusted: each is built byte by byte from a valid one, and the command
line is asked to detect on it: a zero or negative voxel size is refused, a missing orientation or a
qform and sform that disagree run with a warning that says what was assumed, a valid header runs
without one."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from maediff_core.cli import main
from maediff_core.nifti_header import parse_header

PIXDIM, QFORM_CODE, SFORM_CODE, SROW_X = 76, 252, 254, 280  # NIfTI-1 byte offsets (nifti1.h)


@pytest.fixture(scope="module")
def valid(detection_run) -> bytes:
    """The bytes of a valid single-file NIfTI-1 (qform and sform both set, as SimpleITK writes them):
    the skull-stripped tumour phantom of conftest's detection run, on the atlas grid."""
    image = sitk.ReadImage(str(detection_run["folder"] / "input.nii.gz"))
    path = detection_run["folder"] / "valid.nii"
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    header = parse_header(data, path)
    assert header.qform_code > 0 and header.sform_code > 0
    return data


def edited(data: bytes, *changes: tuple[int, str, float]) -> bytes:
    """``data`` with each (offset, struct format, value) written into its header."""
    out = bytearray(data)
    for offset, kind, value in changes:
        struct.pack_into(f"<{kind}", out, offset, value)
    return bytes(out)


def as_written(data: bytes, folder, form: str):
    """The volume as a .nii, a .nii.gz or a .hdr/.img pair; returns the path a user passes."""
    if form == ".nii.gz":
        (folder / "x.nii.gz").write_bytes(gzip.compress(data))
        return folder / "x.nii.gz"
    if form == ".hdr":
        header = bytearray(data[:348])
        header[344:348] = b"ni1\0"  # a pair's magic
        struct.pack_into("<f", header, 108, 0.0)  # its voxels start the .img
        (folder / "x.hdr").write_bytes(bytes(header))
        offset = int(struct.unpack_from("<f", data, 108)[0])
        (folder / "x.img").write_bytes(data[offset:])
        return folder / "x.hdr"
    (folder / "x.nii").write_bytes(data)
    return folder / "x.nii"


def detect(capsys, path, out, tiny_model, *options) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["detect", str(path), "-o", str(out), "--model", str(tiny_model), "--stride", "48", *options])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("form", [".nii", ".nii.gz", ".hdr"])
def test_a_zero_voxel_size_is_refused(valid, tmp_path, capsys, tiny_model, form):
    path = as_written(edited(valid, (PIXDIM + 4, "f", 0.0)), tmp_path, form)
    code, err = detect(capsys, path, tmp_path / "out", tiny_model)
    assert code == 2 and "the voxel size is unknown: the NIfTI header's pixdim[1] is 0.0" in err
    assert not (tmp_path / "out" / "x").exists()


def test_a_negative_slice_size_with_a_qform_only_is_refused(valid, tmp_path, capsys, tiny_model):
    slice_size = struct.unpack_from("<f", valid, PIXDIM + 12)[0]
    path = as_written(edited(valid, (PIXDIM + 12, "f", -slice_size), (SFORM_CODE, "h", 0)), tmp_path, ".nii")
    code, err = detect(capsys, path, tmp_path / "out", tiny_model)
    assert code == 2 and f"pixdim[3] is {-slice_size:g}, a negative voxel size" in err and "SimpleITK flips" in err


def test_no_orientation_runs_and_says_what_was_assumed(valid, tmp_path, capsys, tiny_model):
    path = as_written(edited(valid, (QFORM_CODE, "h", 0), (SFORM_CODE, "h", 0)), tmp_path, ".nii.gz")
    code, err = detect(capsys, path, tmp_path / "out", tiny_model, "--mask-method", "skull-stripped")
    message = "no orientation in the NIfTI header (qform_code and sform_code 0): read with the voxel axes"
    assert code == 0 and f"warning: {path}: {message}" in err
    warnings = json.loads((tmp_path / "out" / "x" / "lesions.json").read_text())["warnings"]
    assert warnings and warnings[0].startswith(message) and "left and right may be swapped" in warnings[0]


def test_a_qform_and_sform_that_disagree_run_with_a_warning_naming_the_one_read(valid, tmp_path, capsys):
    srow_x = struct.unpack_from("<f", valid, SROW_X + 12)[0]
    path = as_written(edited(valid, (SROW_X + 12, "f", srow_x + 40.0)), tmp_path, ".nii")
    capsys.readouterr()
    code = main(["preprocess", str(path), "-o", str(tmp_path / "out"), "--no-register", "--no-n4",
                 "--mask-method", "skull-stripped"])
    err = capsys.readouterr().err
    assert code == 0 and "qform and sform disagree: they place the volume up to 40.0 mm apart; read with the sform" \
        in err
    record = json.loads((tmp_path / "out" / "x" / "record.json").read_text())
    assert any("qform and sform disagree" in w for w in record["warnings"])


def test_a_valid_header_with_qform_and_sform_runs_without_a_warning(detection_run):
    summary = json.loads((detection_run["result_dir"] / "lesions.json").read_text())
    assert summary["warnings"] == []


def test_the_header_is_read_as_written(valid, tmp_path):
    image = sitk.ReadImage(str(as_written(valid, tmp_path, ".nii")))
    header = parse_header(valid, tmp_path / "x.nii")
    assert header.dims == image.GetSize() and np.allclose(header.pixdim[1:4], image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(header.qform(), header.sform(), atol=1e-3)  # SimpleITK writes both alike
    pair = sitk.ReadImage(str(as_written(valid, tmp_path, ".hdr")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pair), sitk.GetArrayFromImage(image))
