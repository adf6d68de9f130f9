"""Phantoms: determinism, T2 contrast, lesions of the promised kinds and sizes, varied geometry."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import posed_phantom

from maediff_core.datasets import discover
from maediff_core.phantom import PhantomConfig, make_phantom, write_phantom_set


def test_same_seed_same_subject_other_seed_other_subject():
    a, b = make_phantom("tumour", 3), make_phantom("tumour", 3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.seg), sitk.GetArrayFromImage(b.seg))
    assert a.info == b.info
    c = make_phantom("tumour", 4)
    assert a.info != c.info


def test_t2_contrast_csf_bright_grey_over_white(atlas):
    # Without deformation or pose the subject lies on the atlas grid, so atlas tissue maps label it.
    identity = sitk.AffineTransform(3)
    phantom = make_phantom("healthy", 1, PhantomConfig(deform=False, noise=(0.0, 0.0), bias=(0.0, 0.0)),
                           atlas, native_grid=atlas.template, pose=identity)
    image = sitk.GetArrayFromImage(phantom.image).astype(float)
    means = {t: image[sitk.GetArrayFromImage(atlas.probability(t)) > 0.9].mean() for t in ("csf", "gm", "wm")}
    assert means["csf"] > 1.3 * means["gm"] > 1.3 * 1.1 * means["wm"], means


def test_tumour_lesion_is_bright_and_in_range(atlas):
    with_oedema = 0
    for seed in range(3):
        phantom, _ = posed_phantom(atlas, "LPS", seed=seed, kind="tumour", spacing=(1.0, 1.0, 1.0))
        seg = sitk.GetArrayFromImage(phantom.seg)
        image = sitk.GetArrayFromImage(phantom.image).astype(float)
        assert set(np.unique(seg)) <= {0, 1, 2} and (seg > 0).any()
        lesion = phantom.info["lesions"][0]
        assert 2.5 <= lesion["radius"] <= 30.0
        # Equivalent diameter of the labelled lesion, allowing for mass effect and the ragged edge.
        diameter = 2 * (3 * (seg > 0).sum() / (4 * np.pi)) ** (1 / 3)
        assert 3.0 < diameter < 90.0
        brain = image > 0.2 * np.percentile(image, 99)
        oedema = seg == 2
        if oedema.sum() > 50:  # a small tumour's oedema is a rim of a few voxels, as bright but partial-volumed
            assert image[oedema].mean() > np.median(image[brain & (seg == 0)])
            with_oedema += 1
    assert with_oedema >= 2  # the comparison above ran


def test_ms_lesions_are_small_white_matter_ovoids(atlas):
    phantom, _ = posed_phantom(atlas, "RAS", seed=2, kind="ms", spacing=(1.0, 1.0, 1.0))
    lesions = phantom.info["lesions"]
    assert 3 <= len(lesions) <= 10
    assert all(1.5 <= lesion["radius"] <= 7.5 for lesion in lesions)
    seg = sitk.GetArrayFromImage(phantom.seg)
    assert set(np.unique(seg)) == {0, 1}
    assert 0.01 < phantom.info["lesion_ml"] < 10


def test_geometries_vary_and_healthy_has_no_segmentation():
    phantoms = [make_phantom("healthy", s) for s in range(3)]  # RAS, two oblique; with and without skull
    assert all(p.seg is None for p in phantoms)
    assert len({p.info["geometry"]["orientation"] for p in phantoms}) >= 2
    assert len({tuple(p.image.GetSpacing()) for p in phantoms}) >= 2
    assert {p.info["skull"] for p in phantoms} == {True, False}
    stripped = next(p for p in phantoms if not p.info["skull"])
    array = sitk.GetArrayFromImage(stripped.image)
    assert (array == 0).mean() > 0.3  # a skull-stripped scan has an exact zero background
    # The true brain (docs/brain-mask.md measures masks against it) is what the stripped scan kept.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stripped.brain) > 0, array > 0)
    assert all(p.brain.GetSize() == p.image.GetSize() and p.brain.GetOrigin() == p.image.GetOrigin() for p in phantoms)


@pytest.mark.parametrize("kind,layout", [("healthy", "phantom-healthy"), ("ms", "phantom-lesion")])
def test_written_sets_follow_their_layout(tmp_path, kind, layout):
    write_phantom_set(tmp_path, kind, 1, seed=7, workers=1)
    cases = discover(tmp_path)
    assert [c.layout for c in cases] == [layout]
    assert all((c.seg is None) == (kind == "healthy") for c in cases)
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    assert [c["case"] for c in manifest["cases"]] == [c.name for c in cases]
