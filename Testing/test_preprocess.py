"""Preprocessing: registration accuracy in several scanner frames, the exact way back to the input
grid, mask methods, and the errors a user gets."""

import os
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import posed_phantom

from maediff_core.detect import SCREEN
from maediff_core.errors import InputError
from maediff_core.phantom import PhantomConfig, make_phantom
from maediff_core.preprocess import (
    PreprocessConfig,
    affine_from_record,
    preprocess,
    to_model,
    to_native,
)
from maediff_core.volume_io import image_from_array, resample_isotropic


def _registration_error_mm(atlas, record, pose) -> float:
    """Mean distance between estimated and true atlas -> input mappings over brain voxels."""
    estimated = affine_from_record(record)
    truth = pose.GetInverse()  # pose maps input (scanner) points onto atlas points
    brain = np.argwhere(sitk.GetArrayFromImage(atlas.brain_mask))[::997]
    errors = []
    for zyx in brain:
        point = atlas.template.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]])
        errors.append(np.linalg.norm(np.subtract(estimated.TransformPoint(point), truth.TransformPoint(point))))
    return float(np.mean(errors))


FRAMES = [("LPS", (1.0, 1.0, 1.2)), ("RAS", (0.9375, 0.9375, 3.0)), ("oblique", (1.2, 0.8, 2.0))]


@pytest.fixture(scope="module", params=FRAMES, ids=lambda p: p[0])
def registered(request, atlas):
    frame, spacing = request.param
    phantom, pose = posed_phantom(atlas, frame, seed={"LPS": 1, "RAS": 2, "oblique": 3}[frame], spacing=spacing)
    before = sitk.GetArrayFromImage(phantom.image).copy()
    # The whole chain (N4 after registration included) on one frame; registration alone on the others.
    result = preprocess(phantom.image, PreprocessConfig(bias_correction=frame == "oblique"), atlas)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(phantom.image), before)  # input untouched
    return phantom, pose, result


def test_registration_recovers_known_affine(registered, atlas):
    _, pose, result = registered
    error = _registration_error_mm(atlas, result.record, pose)
    assert error < 1.0, f"mean registration error {error:.2f} mm"


@pytest.mark.parametrize("registered", FRAMES[2:], ids=["oblique"], indirect=True)  # one frame is enough
def test_registration_is_reproducible(registered, atlas):
    """The same seed gives the same transform (SimpleITK's seed 0 would mean 'wall clock')."""
    phantom, _, result = registered
    again = preprocess(phantom.image, PreprocessConfig(bias_correction=False, smoothing=False), atlas)
    np.testing.assert_allclose(affine_from_record(again.record).GetParameters(),
                               affine_from_record(result.record).GetParameters(), atol=1e-6)


@pytest.mark.parametrize("registered", FRAMES[2:], ids=["oblique"], indirect=True)
def test_screening_registers_its_2mm_copy_within_a_millimetre(registered, atlas):
    """`maediff detect --check` registers a 2 mm copy at the two coarse levels only (0.3 to 0.6 mm
    from the truth on the three frames, docs/input-checks.md), so that its tissues lie where detection's do."""
    phantom, pose, _ = registered
    screened = preprocess(phantom.image, replace(PreprocessConfig(), **SCREEN), atlas)
    assert screened.record["config"]["registration_mm"] == 2.0
    error = _registration_error_mm(atlas, screened.record, pose)
    assert error < 1.0, f"mean registration error {error:.2f} mm"


def test_model_space_image(registered, atlas):
    _, _, result = registered
    assert result.image.shape == (50, 96, 96) and result.mask.shape == (50, 96, 96)
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert np.all(result.image[~result.mask] == 0)
    # Without anatomical deformation the brain is the atlas brain: 1652 mL inside the model box.
    assert 1400 < result.record["brain_ml"] < 1900
    identity = {**result.record, "atlas_to_native": {"matrix_4x4": np.eye(4).tolist()}}
    atlas_mask = to_model(atlas.brain_mask, identity, labels=True)
    assert _dice(result.mask, atlas_mask > 0) > 0.93
    corrected = {"bias_correction"} if result.record["config"]["bias_correction"] else set()
    assert {"register", "brain_mask", "model_space"} | corrected <= set(result.record["timings_s"])


def test_round_trip_of_a_smooth_map(registered):
    phantom, _, result = registered
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (50, 96, 96)], indexing="ij")
    smooth = (np.sin(2 * np.pi * x) * np.cos(np.pi * y) + z).astype(np.float32)
    native = to_native(smooth, result.record)
    assert native.GetSize() == phantom.image.GetSize()
    np.testing.assert_allclose(native.GetOrigin(), phantom.image.GetOrigin())
    np.testing.assert_allclose(native.GetDirection(), phantom.image.GetDirection())
    back = to_model(native, result.record)
    inner = result.mask.copy()
    inner[:3], inner[-3:] = False, False  # the box's outer slices have no neighbours to interpolate
    error = np.abs(back - smooth)[inner]
    assert error.mean() < 0.02 * np.ptp(smooth), error.mean()


def test_labels_keep_their_position(registered):
    phantom, _, result = registered
    labels = np.zeros((50, 96, 96), np.int32)
    labels[20:24, 40:45, 50:56] = 3
    labels[30:32, 60:62, 30:33] = 7
    native = to_native(labels, result.record, labels=True)
    assert set(np.unique(sitk.GetArrayFromImage(native))) == {0, 3, 7}  # no interpolated values
    model_grid = image_from_array(labels, result.record["model_grid"])
    atlas_to_native = affine_from_record(result.record)
    for value in (3, 7):
        model_centre = _centroid(model_grid, labels == value)
        native_centre = _centroid(native, sitk.GetArrayFromImage(native) == value)
        expected = np.array(atlas_to_native.TransformPoint(model_centre.tolist()))
        # Nearest-neighbour sampling moves a centroid by well under one model voxel (2 mm).
        assert np.linalg.norm(native_centre - expected) < 1.0


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _centroid(grid: sitk.Image, mask: np.ndarray) -> np.ndarray:
    points = [grid.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]) for zyx in np.argwhere(mask)]
    return np.mean(points, axis=0)


def test_skull_stripped_and_file_masks(atlas):
    phantom = make_phantom("healthy", 5, PhantomConfig(deform=False, skull_probability=0.0), atlas,
                           native_grid=atlas.template, pose=sitk.AffineTransform(3))
    # The mask comes before N4 and smoothing, which do not change it, and registration is tested on
    # its own: all three are skipped here (the phantom lies in atlas space).
    fast = {"bias_correction": False, "smoothing": False, "register": False}
    stripped = preprocess(phantom.image, PreprocessConfig(mask_method="skull-stripped", **fast), atlas)
    native_mask = sitk.Cast(phantom.image > 0, sitk.sitkUInt8)
    from_file = preprocess(phantom.image, PreprocessConfig(mask_method="file", **fast), atlas, mask=native_mask)
    # "Already skull-stripped" means: the non-zero voxels are the brain mask.
    np.testing.assert_array_equal(stripped.mask, from_file.mask)
    assert 1400 < stripped.record["brain_ml"] < 1900


def test_the_deformable_mask_scales_a_head_with_its_skull_as_the_same_head_stripped(atlas):
    """The same subject rendered with its skull and skull-stripped: the `atlas-deformable` mask finds the
    same brain in both, and the brain's intensities come out the same (preprocess.intensity_range)."""
    fast = {"bias_correction": False, "smoothing": False, "register": False}  # the phantom lies in atlas space
    skull, stripped = (
        preprocess(make_phantom("healthy", 1000, PhantomConfig(skull_probability=p), atlas,
                                native_grid=atlas.template, pose=sitk.AffineTransform(3)).image,
                   PreprocessConfig(mask_method="atlas-deformable", **fast), atlas)
        for p in (1.0, 0.0)
    )
    assert _dice(skull.mask, stripped.mask) > 0.95
    both = skull.mask & stripped.mask
    assert abs(np.median(skull.image[both] - stripped.image[both])) < 0.05  # -0.025; -0.22 uncapped


STAND_IN_STRIPPER = """#!{python}
# mri_synthstrip as its documentation gives it (-i image -o stripped -m mask): writes a known mask, the
# non-zero voxels left of the volume's middle column, or fails when asked to.
import sys
import SimpleITK as sitk
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
image = sitk.ReadImage(args["-i"])
if image.GetSize()[0] < 20:
    sys.exit("synthstrip: error: volume too small")
known = sitk.Cast(image > 0, sitk.sitkUInt8)
known[image.GetSize()[0] // 2:, :, :] = 0
sitk.WriteImage(known, args["-m"])
sitk.WriteImage(sitk.Mask(image, known), args["-o"])
"""


def test_an_external_skull_stripper_runs_as_its_command_line_says(atlas, tmp_path, monkeypatch):
    """The plug-in path (preprocess.EXTERNAL_STRIPPERS) with a stand-in that writes a known mask: the
    tool itself, and its weights, cannot be installed here."""
    import sys

    tool = tmp_path / "mri_synthstrip"
    tool.write_text(STAND_IN_STRIPPER.replace("{python}", sys.executable))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    phantom = make_phantom("healthy", 5, PhantomConfig(deform=False, skull_probability=0.0), atlas,
                           native_grid=atlas.template, pose=sitk.AffineTransform(3))
    fast = {"bias_correction": False, "smoothing": False, "register": False}
    stripped = preprocess(phantom.image, PreprocessConfig(mask_method="synthstrip", **fast), atlas)
    known = sitk.Cast(phantom.image > 0, sitk.sitkUInt8)
    known[phantom.image.GetSize()[0] // 2:, :, :] = 0
    from_file = preprocess(phantom.image, PreprocessConfig(mask_method="file", **fast), atlas, mask=known)
    np.testing.assert_array_equal(stripped.mask, from_file.mask)
    small = sitk.Image([10, 10, 10], sitk.sitkInt16) + 5
    with pytest.raises(InputError, match="mri_synthstrip failed: synthstrip: error: volume too small"):
        preprocess(small, PreprocessConfig(mask_method="synthstrip", **fast), atlas)


def test_bad_inputs_give_specific_errors(atlas):
    phantom, _ = posed_phantom(atlas, "LPS", seed=6)
    with pytest.raises(InputError, match="needs a brain mask volume"):
        preprocess(phantom.image, PreprocessConfig(mask_method="file"), atlas)
    wrong = sitk.Image([10, 10, 10], sitk.sitkUInt8) + 1
    with pytest.raises(InputError, match="differs from the volume"):
        preprocess(phantom.image, PreprocessConfig(mask_method="file", register=False), atlas, mask=wrong)
    with pytest.raises(InputError, match="not installed"):
        preprocess(phantom.image, PreprocessConfig(mask_method="hd-bet", register=False), atlas)
    with pytest.raises(ValueError, match="mask_method must be one of"):
        PreprocessConfig(mask_method="magic")
    with pytest.raises(InputError, match="expected"):
        to_native(np.zeros((10, 10, 10)), {"model_grid": {"size": [96, 96, 50]}})


def test_isotropic_resampling_keeps_physical_space():
    image = sitk.GetImageFromArray(np.random.rand(20, 40, 30).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, 0.1, 0.3).GetMatrix())
    iso = resample_isotropic(image, 1.0)
    np.testing.assert_allclose(iso.GetSpacing(), (1, 1, 1))
    def centre(im):
        return np.array(im.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in im.GetSize()]))

    np.testing.assert_allclose(centre(iso), centre(image), atol=1e-6)


def test_user_supplied_atlas(tmp_path, atlas):
    """Any template + mask becomes an atlas (here the bundled template stored RAS at 1.5 mm)."""
    from maediff_core.atlas import make_user_atlas

    coarse = resample_isotropic(sitk.DICOMOrient(atlas.template, "RAS"), 1.5)  # same physical image
    sitk.WriteImage(coarse, str(tmp_path / "template.nii.gz"))
    mask = sitk.Resample(atlas.brain_mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    user = make_user_atlas(tmp_path / "template.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "atlas")
    assert user.template.GetSize() == (192, 192, 160) and user.template.GetSpacing() == (1.0, 1.0, 1.0)
    phantom, pose = posed_phantom(atlas, "LPS", seed=8)
    result = preprocess(phantom.image, PreprocessConfig(bias_correction=False, smoothing=False,
                                                        atlas=str(tmp_path / "atlas")))
    assert result.image.shape == (50, 96, 96) and result.record["config"]["atlas"] == str(tmp_path / "atlas")
    # The user atlas is the bundled one resampled, so the mapping to the input must agree to ~1 mm.
    assert _registration_error_mm(atlas, result.record, pose) < 2.0


def test_preprocess_command_writes_one_complete_folder_per_case(tmp_path, atlas, capsys):
    from maediff_core.cli import main
    from maediff_core.volume_io import write_volume

    brain = sitk.Mask(atlas.template, atlas.brain_mask)
    for folder in ("a", "b"):
        write_volume(brain, tmp_path / folder / "T2.nii.gz")
    fast = ["--no-register", "--mask-method", "skull-stripped", "--no-n4"]
    out = tmp_path / "out"
    assert main(["preprocess", str(tmp_path / "a" / "T2.nii.gz"), str(tmp_path / "b" / "T2.nii.gz"), *fast,
                 "-o", str(out)]) == 2
    assert "would both write" in capsys.readouterr().err and not out.exists()
    assert main(["preprocess", str(tmp_path / "a" / "T2.nii.gz"), *fast, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["T2"]
    assert sorted(p.name for p in (out / "T2").iterdir()) == ["image.nii.gz", "mask.nii.gz", "record.json"]
