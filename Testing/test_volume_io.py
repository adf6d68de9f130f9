import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from maediff_core.volume_io import VolumeError, read_volume, write_volume


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
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all")
    with pytest.raises(VolumeError, match="cannot be read"):
        read_volume(bad)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM series"):
        read_volume(tmp_path / "empty")


def test_wrong_dimension(tmp_path):
    flat = sitk.GetImageFromArray(np.random.rand(32, 32).astype(np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(VolumeError, match="3-D"):
        read_volume(tmp_path / "flat.nii.gz")
    four = sitk.GetImageFromArray(np.random.rand(3, 8, 8, 8).astype(np.float32), isVector=False)
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    with pytest.raises(VolumeError, match="3-D"):
        read_volume(tmp_path / "four.nii.gz")
    single_slice = sitk.GetImageFromArray(np.random.rand(1, 32, 32).astype(np.float32))
    sitk.WriteImage(single_slice, str(tmp_path / "slice.nii.gz"))
    with pytest.raises(VolumeError, match="below 2 voxels"):
        read_volume(tmp_path / "slice.nii.gz")


def test_non_finite_constant_and_absurd_spacing(tmp_path):
    array = np.random.rand(8, 8, 8).astype(np.float32)
    array[2, 3, 4] = np.nan
    # NIfTI writing turns NaN into 0, MetaImage keeps it.
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.mha"))
    with pytest.raises(VolumeError, match="NaN or infinite"):
        read_volume(tmp_path / "nan.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), 5, np.int16)), str(tmp_path / "const.nii.gz"))
    with pytest.raises(VolumeError, match="same value 5"):
        read_volume(tmp_path / "const.nii.gz")
    image = sitk.GetImageFromArray(np.random.rand(8, 8, 8).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 150.0))
    sitk.WriteImage(image, str(tmp_path / "thick.nii.gz"))
    with pytest.raises(VolumeError, match="implausible voxel spacing"):
        read_volume(tmp_path / "thick.nii.gz")


def test_write_refuses_unknown_suffix(tmp_path):
    with pytest.raises(VolumeError, match="unsupported output type"):
        write_volume(_volume(), tmp_path / "out.png")
