"""With SimpleITK < 2.4, CenteredTransformInitializer returns a generic Transform (no GetMatrix):
the registration must still recover a known pose."""

import numpy as np
import SimpleITK as sitk

from maediff_core.atlas import Atlas
from maediff_core.preprocess import PreprocessConfig, register_affine


def test_simpleitk_is_older_than_2_4():
    assert tuple(int(p) for p in sitk.Version.VersionString().split(".")[:2]) < (2, 4)


def test_registration_recovers_a_known_pose():
    atlas = Atlas.load()
    template = atlas.template
    centre = np.array(template.TransformContinuousIndexToPhysicalPoint([s / 2 for s in template.GetSize()]))
    truth = sitk.AffineTransform(3)  # atlas point -> scanner point
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.10, -0.06, 0.12)
    truth.SetMatrix((np.array(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.05, 0.97, 1.0])).ravel().tolist())
    truth.SetTranslation((8.0, -6.0, 5.0))
    truth.SetCenter(centre.tolist())
    grid = sitk.Image([160, 160, 60], sitk.sitkFloat32)
    grid.SetSpacing((1.2, 1.2, 3.0))
    grid.SetOrigin((centre - np.array([96.0, 96.0, 90.0])).tolist())
    scan = sitk.Resample(template, grid, truth.GetInverse(), sitk.sitkLinear, 0.0)

    found, _ = register_affine(scan, atlas, PreprocessConfig())

    brain = np.argwhere(sitk.GetArrayViewFromImage(atlas.brain_mask))[::500][:, ::-1]
    points = [template.TransformIndexToPhysicalPoint([int(i) for i in p]) for p in brain]
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points]
    assert np.mean(errors) < 1.0 and np.max(errors) < 2.0, (np.mean(errors), np.max(errors))
