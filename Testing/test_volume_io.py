import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from maediff_core.errors import InputError, OptionError
from maediff_core.files import check_writable, folder_as_a_set, output_folders, write_text_atomic
from maediff_core.volume_io import read_volume, write_volume


def _volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(0.9, 1.1, 3.0)) -> sitk.Image:
    array = np.random.default_rng(0).normal(100, 20, (12, 20, 16)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 30.0, 7.25))
    image.SetDirection(direction)
    return image


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       tuple(sitk.Euler3DTransform((0, 0, 0), 0.3, 0.1, -0.2).GetMatrix())])
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix, direction):
    image = _volume(direction)
    path = write_volume(image, tmp_path / f"vol{suffix}")
    back = read_volume(path)
    _same_geometry(image, back)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image), rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_dicom_series_folder(tmp_path):
    image = sitk.Cast(_volume(spacing=(0.9, 0.9, 3.0)), sitk.sitkInt16)
    write_dicom_series(image, tmp_path)
    back = read_volume(tmp_path)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), (0.9, 0.9, 3.0), atol=1e-3)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all")
    with pytest.raises(InputError, match="cannot be read"):
        read_volume(bad)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "empty")


def test_wrong_dimension(tmp_path):
    flat = sitk.GetImageFromArray(np.random.rand(32, 32).astype(np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="3-D"):
        read_volume(tmp_path / "flat.nii.gz")
    four = sitk.GetImageFromArray(np.random.rand(3, 8, 8, 8).astype(np.float32), isVector=False)
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match="3-D"):
        read_volume(tmp_path / "four.nii.gz")
    single_slice = sitk.GetImageFromArray(np.random.rand(1, 32, 32).astype(np.float32))
    sitk.WriteImage(single_slice, str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputError, match="below 2 voxels"):
        read_volume(tmp_path / "slice.nii.gz")


def test_non_finite_constant_and_absurd_spacing(tmp_path):
    array = np.random.rand(8, 8, 8).astype(np.float32)
    array[2, 3, 4] = np.nan
    # SimpleITK's NIfTI reader turns NaN and Inf into 0: those files are checked on their raw bytes.
    for suffix in (".mha", ".nii.gz", ".nii"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"nan{suffix}"))
        with pytest.raises(InputError, match="NaN or infinite"):
            read_volume(tmp_path / f"nan{suffix}")
    array[2, 3, 4] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "inf.nii.gz"))
    with pytest.raises(InputError, match="1 voxels are NaN or infinite"):
        read_volume(tmp_path / "inf.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), 5, np.int16)), str(tmp_path / "const.nii.gz"))
    with pytest.raises(InputError, match="same value 5"):
        read_volume(tmp_path / "const.nii.gz")
    image = sitk.GetImageFromArray(np.random.rand(8, 8, 8).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 150.0))
    sitk.WriteImage(image, str(tmp_path / "thick.nii.gz"))
    with pytest.raises(InputError, match="implausible voxel spacing"):
        read_volume(tmp_path / "thick.nii.gz")


def test_write_refuses_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="unsupported output type"):
        write_volume(_volume(), tmp_path / "out.png")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_file_cut_short_is_refused(tmp_path, suffix):
    # SimpleITK reads a truncated NIfTI with the missing voxels as 0, and says nothing.
    path = write_volume(_volume(), tmp_path / f"whole{suffix}")
    data = path.read_bytes()
    (tmp_path / f"half{suffix}").write_bytes(data[: len(data) // 2])
    assert sitk.ReadImage(str(tmp_path / f"half{suffix}")).GetSize() == (16, 20, 12)
    with pytest.raises(InputError, match="cut short"):
        read_volume(tmp_path / f"half{suffix}")
    read_volume(path)


def test_a_short_write_never_reaches_the_final_name(tmp_path):
    """A full disk, made real by a file-size limit in a child process: SimpleITK's writer does not
    raise on the short write, so the write is checked by reading it back before the rename."""
    good = write_volume(_volume(), tmp_path / "result.nii.gz").read_bytes()
    child = f"""
import resource, signal, sys
import SimpleITK as sitk
import numpy as np
from maediff_core.errors import InputError
from maediff_core.volume_io import write_volume
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
image = sitk.GetImageFromArray(np.random.default_rng(1).normal(100, 20, (12, 20, 16)).astype(np.float32))
try:
    write_volume(image, {str(tmp_path / "result.nii.gz")!r})
except InputError as err:
    sys.exit(str(err))
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert "did not read back as written" in done.stderr, done.stderr
    assert len(good) > 4096 and (tmp_path / "result.nii.gz").read_bytes() == good  # the earlier result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]  # no temporary left


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        volume = write_volume(_volume(), tmp_path / "v.nii.gz")
        text = write_text_atomic("{}", tmp_path / "t.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(volume.stat().st_mode) == stat.S_IMODE(text.stat().st_mode) == 0o640


def test_a_result_folder_is_replaced_as_a_set(tmp_path, monkeypatch):
    result = tmp_path / "case"
    with folder_as_a_set(result) as folder:
        (folder / "heatmap.txt").write_text("old")
        (folder / "lesions.json").write_text("old")
    (tmp_path / ".case.partial-killed").mkdir()  # left by a killed run: swept at the next start
    with pytest.raises(RuntimeError, match="killed"):
        with folder_as_a_set(result) as folder:
            (folder / "heatmap.txt").write_text("new")
            raise RuntimeError("killed while writing")
    rename = os.rename

    def failing_second_rename(source, target):
        if ".partial-" in str(source):
            raise OSError("no space left")
        rename(source, target)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(OSError, match="no space"):
        with folder_as_a_set(result) as folder:
            (folder / "heatmap.txt").write_text("new")
    monkeypatch.undo()
    # Never a mix: the earlier set, whole, under its name, and nothing else left behind.
    assert {p.name: p.read_text() for p in result.iterdir()} == {"heatmap.txt": "old", "lesions.json": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["case"]
    with folder_as_a_set(result) as folder:
        (folder / "heatmap.txt").write_text("new")
    assert [p.name for p in result.iterdir()] == ["heatmap.txt"]  # replaced, not merged


def test_inputs_sharing_a_case_name_and_unwritable_outputs_are_refused(tmp_path):
    with pytest.raises(OptionError, match="a/T2.nii.gz and b/T2.nii.gz would both write"):
        output_folders(["a/T2.nii.gz", "b/T2.nii.gz"], tmp_path)
    assert output_folders(["a/T2.nii.gz", "b/T1.nii.gz"], tmp_path) == [tmp_path / "T2", tmp_path / "T1"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="cannot write results there"):
        check_writable(tmp_path / "file")
    with pytest.raises(OptionError, match="cannot write results there"):
        check_writable(tmp_path / "file" / "below")
