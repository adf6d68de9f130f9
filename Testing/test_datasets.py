"""Discovery of the public layouts, subject-disjoint splits, and the resumable model-space cache."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import fast_preprocessing

from maediff_core.cache import check_split, load_prepared, read_split_csv, select, write_split_csv
from maediff_core.datasets import discover, make_split, prepare_dataset
from maediff_core.errors import InputError
from maediff_core.phantom import PhantomConfig, make_phantom


def _touch_volume(path: Path, value: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray((np.arange(4 * 5 * 6).reshape(4, 5, 6) % 7 * value).astype(np.int16))
    sitk.WriteImage(image, str(path))


def test_ixi_layout_groups_files_by_subject(tmp_path):
    for name in ("IXI002-Guys-0828-T2", "IXI012-HH-1211-T2", "IXI012-HH-1212-T2", "IXI013-HH-1212-T2"):
        _touch_volume(tmp_path / f"{name}.nii.gz")
    _touch_volume(tmp_path / "IXI002-Guys-0828-PD.nii.gz")  # other contrasts are ignored
    cases = discover(tmp_path)
    assert [c.name for c in cases] == ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI012-HH-1212", "IXI013-HH-1212"]
    assert [c.subject for c in cases] == ["IXI002", "IXI012", "IXI012", "IXI013"]
    assert {c.layout for c in cases} == {"ixi"} and all(c.seg is None for c in cases)


def test_brats_and_mslub_layouts_find_segmentations(tmp_path):
    for i in (0, 2):
        case = tmp_path / "brats" / f"BraTS2021_{i:05d}"
        for suffix in ("t1", "t2", "flair", "seg"):
            _touch_volume(case / f"BraTS2021_{i:05d}_{suffix}.nii.gz")
    cases = discover(tmp_path / "brats")
    assert [(c.name, c.layout) for c in cases] == [("BraTS2021_00000", "brats21"), ("BraTS2021_00002", "brats21")]
    assert all(c.seg.name.endswith("_seg.nii.gz") for c in cases)

    for p in ("patient01", "patient02"):
        for name in ("T1W", "T2W", "FLAIR", "consensus_gt"):
            _touch_volume(tmp_path / "mslub" / p / "raw" / f"{p}_{name}.nii.gz")
    cases = discover(tmp_path / "mslub")
    assert [(c.name, c.subject, c.layout) for c in cases] == [("patient01", "patient01", "mslub"),
                                                              ("patient02", "patient02", "mslub")]
    assert cases[0].seg.name == "patient01_consensus_gt.nii.gz"


def test_missing_segmentation_and_unknown_layout(tmp_path):
    _touch_volume(tmp_path / "b" / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz")
    with pytest.raises(InputError, match="no segmentation"):
        discover(tmp_path / "b")
    _touch_volume(tmp_path / "other" / "scan.nii.gz")
    with pytest.raises(InputError, match="no T2 volumes found"):
        discover(tmp_path / "other")


def test_splits_never_share_a_subject(tmp_path):
    for i in range(30):
        for session in (1, 2):  # two scans per subject
            _touch_volume(tmp_path / f"IXI{i:03d}-HH-{session}-T2.nii.gz")
    cases = discover(tmp_path)
    rows = make_split(cases, test_fraction=0.28, folds=5, seed=1)
    path = write_split_csv(rows, tmp_path / "split.csv")
    rows = read_split_csv(path)
    by_subject = {}
    for row in rows:
        by_subject.setdefault(row["subject"], set()).add((row["split"], row["fold"]))
    assert all(len(v) == 1 for v in by_subject.values())
    test = select(rows, "test")
    assert len(test) == 2 * round(0.28 * 30)
    for fold in range(5):
        train, val = set(select(rows, "train", fold)), set(select(rows, "val", fold))
        assert train and val and not train & val and not (train | val) & set(test)
    rows[0] = {**rows[0], "split": "test" if rows[0]["split"] != "test" else "train"}
    with pytest.raises(InputError, match="appears in"):
        check_split(rows)


def test_prepare_is_resumable_and_skips_a_failing_case(tmp_path, atlas):
    """On phantoms already in atlas space, prepared without registration (tested on its own)."""
    source = tmp_path / "set"
    for i, seed in enumerate((21, 22), start=1):
        phantom = make_phantom("tumour", seed, PhantomConfig(skull_probability=0.0), atlas, native_grid=atlas.template,
                               pose=sitk.AffineTransform(3))
        folder = source / f"PHT00{i}"
        folder.mkdir(parents=True)
        sitk.WriteImage(phantom.image, str(folder / f"PHT00{i}_t2.nii.gz"), True)
        sitk.WriteImage(phantom.seg, str(folder / f"PHT00{i}_seg.nii.gz"), True)
    broken = source / "PHT003"
    broken.mkdir()
    (broken / "PHT003_t2.nii.gz").write_bytes(b"not an image")
    _touch_volume(broken / "PHT003_seg.nii.gz")

    fast = fast_preprocessing()
    out = tmp_path / "prepared"
    summary = prepare_dataset(source, out, fast, workers=2)
    assert summary["prepared"] == 2 and summary["failed"] == ["PHT003"]
    assert "cannot be read" in (out / "failures.csv").read_text()
    cases = load_prepared(out)
    assert [c.name for c in cases] == ["PHT001", "PHT002"]
    for case in cases:
        assert case.image.shape == case.mask.shape == case.seg.shape == (50, 96, 96)
        assert case.seg.any() and (case.seg & case.mask).sum() > 0.5 * case.seg.sum()
    stamp = (out / "PHT001" / "record.json").stat().st_mtime_ns
    again = prepare_dataset(source, out, fast, workers=1)
    assert again["skipped_already_done"] == 2
    assert (out / "PHT001" / "record.json").stat().st_mtime_ns == stamp
    assert {r["split"] for r in read_split_csv(out / "split.csv")} <= {"val", "test"}
