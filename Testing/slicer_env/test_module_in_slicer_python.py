"""A radiologist's path through the module in Slicer's own Python: the built module folder only,
the bundled sample and model, detection started as Slicer starts it, results loaded into the MRML
scene, the threshold slider, export to NIfTI, .seg.nrrd and DICOM SEG."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import urllib.request

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import MODULE, PINS, RELEASE, wait_for
from dicom_series import write_dicom_series
from MAEDiffAnomalyLib import dependencies, model_card
from MAEDiffAnomalyLib import scene as scene_lib
from MAEDiffAnomalyLib.runner import CoreProcess, DetectionProcess, DetectRequest, core_command, device_summary

from maediff_core.resources import default_model_path, resources_dir, sample_paths


def pinned() -> dict[str, str]:
    lines = [l.split("#")[0].strip() for l in PINS.read_text().splitlines()]
    return dict(l.split("==") for l in lines if l)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def test_everything_comes_from_the_module_folder():
    import maediff_core
    import MAEDiffAnomalyLib

    assert os.path.dirname(maediff_core.__file__) == str(MODULE / "maediff_core")
    assert os.path.dirname(MAEDiffAnomalyLib.__file__) == str(MODULE / "MAEDiffAnomalyLib")
    assert resources_dir() == MODULE / "Resources"
    assert default_model_path().is_file() and all(p.is_file() for p in sample_paths())
    assert (resources_dir() / "atlas" / "atlas.json").is_file()
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("maediff-core")  # not installed: only the vendored copy exists
    for entry in sys.path:  # and nothing else on the path could stand in for it
        if os.path.abspath(entry or ".") != str(MODULE):
            assert not os.path.exists(os.path.join(entry or ".", "maediff_core")), entry


def test_slicer_packages_are_slicers_and_only_the_installers_were_added():
    for name, version in pinned().items():
        assert importlib.metadata.version(name) == version, name
    for name in ("tqdm", "tensorboard", "matplotlib", "sklearn"):  # Slicer ships none of them
        assert importlib.util.find_spec(name) is None, f"{name} is installed: the test would not notice a need"
    assert dependencies.missing("detect") == []


@pytest.fixture(scope="module")
def run(tmp_path_factory, python_slicer, launch):
    """The bundled sample as the Sample Data module loads it (its file URI into the cache, checksum
    checked), into a study and under a transform; detection as the module starts it."""
    scene = scene_lib.headless_scene()
    folder = tmp_path_factory.mktemp("sample")
    volume, truth = sample_paths()
    cached = folder / "cache" / volume.name
    cached.parent.mkdir()
    urllib.request.urlretrieve(volume.as_uri(), cached)  # SampleDataLogic.downloadFile
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(volume.read_bytes()).hexdigest()
    input_node = scene_lib.read_volume_node(scene, cached, "MAEDiffT2Sample")
    input_node.CreateDefaultDisplayNodes()
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(input_node) or hierarchy.CreateItem(study, input_node), study)
    placement = scene_lib.Placement.of(scene, input_node)

    work = folder / "work"
    input_path = scene_lib.write_node(scene, input_node, work / "input.nrrd")
    before = input_path.read_bytes()
    card = model_card.read_card(default_model_path())
    # Slicer 5.12 (current): the card's operating point, as a user gets it. Slicer 5.10: the same
    # code at stride 48 (4 patch positions instead of 16), to keep the suite's time in bounds.
    override = model_card.overrides(0, model_card.MODEL_DEFAULT if RELEASE == "5.12" else "48", 0.0)
    request = DetectRequest(input_path, work / "output", model_path=default_model_path(), device="cpu", **override)
    process = DetectionProcess(request, python_slicer, launch)
    start = time.perf_counter()
    ok, error = wait_for(process)
    assert ok, error + "\n" + "\n".join(process.log[-20:])
    seconds = time.perf_counter() - start
    # Slicer renames the input while the run goes on; the results keep the name it started with.
    input_node.SetName("renamed during the run")
    results = scene_lib.load_results(scene, placement, process.result_dir)
    print(f"\nSlicer {RELEASE}: detect {seconds:.0f} s, {len(results.rows)} candidates")
    return {"scene": scene, "input": input_node, "transform": transform, "study": study, "process": process,
            "results": results, "card": card, "truth": sitk.ReadImage(str(truth)), "folder": folder,
            "input_unchanged": input_path.read_bytes() == before, "python": python_slicer}


def test_detection_reports_one_rising_progress(run):
    process = run["process"]
    assert "--stop-with-parent" in process.args and process.args[0] == run["python"]
    stages = [stage for stage, _ in process.progress.events]
    assert {"load", "preprocess", "reconstruct", "postprocess", "write", "done"} <= set(stages)
    fractions = [fraction for _, fraction in process.progress.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    preprocess = [f for stage, f in process.progress.events if stage == "preprocess"]
    assert len(preprocess) >= 5 and preprocess[-1] > preprocess[0]  # moves during preprocessing
    assert run["input_unchanged"]


def test_results_sit_where_the_input_sat(run):
    results, input_node, scene = run["results"], run["input"], run["scene"]
    for node in (results.heatmap, results.reconstruction):
        assert node.GetImageData().GetDimensions() == input_node.GetImageData().GetDimensions()
        np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(input_node), atol=1e-4)
    for node in (results.heatmap, results.reconstruction, results.lesions):
        assert node.GetTransformNodeID() == run["transform"].GetID()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    for node in (results.heatmap, results.reconstruction, results.lesions, results.table):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == run["study"]
    assert results.heatmap.GetName() == "MAEDiffT2Sample anomaly heatmap"
    summary = json.loads((results.result_dir / "lesions.json").read_text())
    assert results.lesions.GetSegmentation().GetNumberOfSegments() == summary["lesion_count"] == len(results.rows)
    assert results.table.GetTable().GetNumberOfRows() == summary["lesion_count"]


def test_the_known_lesion_is_found(run):
    results = run["results"]
    labels = scene_lib.lesion_label_array(results)
    truth = sitk.GetArrayFromImage(run["truth"]) > 0
    dice = 2 * np.count_nonzero((labels > 0) & truth) / (np.count_nonzero(labels) + np.count_nonzero(truth))
    hits = [row["label"] for row in results.rows if np.count_nonzero(truth[labels == row["label"]]) > 0.5 * row["voxels"]]
    print(f"\nSlicer {RELEASE}: Dice {100 * dice:.1f} % against the known lesion; candidates on it: {hits}")
    assert hits, "no lesion candidate lies on the known lesion"
    assert dice > 0.05


def test_threshold_slider_updates_in_place(run):
    scene, results = run["scene"], run["results"]
    segmentation = results.lesions.GetSegmentation()
    user = segmentation.AddEmptySegment("my_note", "checked by reader")
    before = sum(r["voxels"] for r in results.rows)
    start = time.perf_counter()
    stricter = scene_lib.update_threshold(scene, results, 1.5 * results.threshold)
    seconds = time.perf_counter() - start
    print(f"\nthreshold update {seconds:.2f} s on {results.heat.GetSize()} voxels")
    assert sum(r["voxels"] for r in stricter) <= before
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert user in ids and len(ids) == len(stricter) + 1  # the reader's segment is kept
    exported = scene_lib.lesion_label_array(results)
    for row in stricter:
        assert np.count_nonzero(exported == row["label"]) == row["voxels"]
    first = segmentation.GetSegment(f"{scene_lib.LESION_ID}1")
    first.SetColor(0.0, 0.0, 1.0)  # the user recoloured lesion 1: a new threshold keeps the segment
    scene_lib.update_threshold(scene, results, results.threshold)
    assert segmentation.GetSegment(f"{scene_lib.LESION_ID}1") is first
    segmentation.RemoveSegment(user)


def dicom_series_of(run) -> list[str]:
    """The sample as the DICOM series it would come from, in instance order (once per run)."""
    folder = run["folder"] / "dicom"
    if "dicom" not in run:
        run["dicom"] = write_dicom_series(sitk.ReadImage(str(sample_paths()[0])), folder)
    return run["dicom"]


DICOM_SEG_ON_5_10 = ("Slicer 5.10's pydicom 2.4.4 takes only highdicom 0.22, which fails on numpy 2: "
                     "DICOM SEG export is for 5.12 (test_dicom_seg_is_refused_clearly_on_5_10)")


def test_dicom_seg_is_refused_clearly_on_5_10(run):
    reason = dependencies.dicom_seg_unavailable()
    if RELEASE == "5.10":
        assert reason and "pydicom 3" in reason and "2.4.4" in reason
        # What the installer would have done before: the only highdicom pip finds for pydicom 2.4.4.
        pins = dict(p.split("==") for p in dependencies.installed_pins())
        assert pins["pydicom"] == "2.4.4" and "highdicom" not in pins
        report = scene_lib.export_results(run["scene"], run["results"], run["folder"] / "export-510",
                                          dicom_series_of(run), reason)
        assert dict(report.skipped)["MAEDiffT2Sample_lesions_seg.dcm"] == reason
        assert "MAEDiffT2Sample_lesions.seg.nrrd" in {p.name for p in report.written}
    else:
        assert reason is None and dependencies.missing("export") == []  # Slicer 5.12 ships highdicom


@pytest.mark.skipif(RELEASE == "5.10", reason=DICOM_SEG_ON_5_10)
def test_export_writes_every_format(run):
    scene, results = run["scene"], run["results"]
    files = dicom_series_of(run)
    out = run["folder"] / "export"
    report = scene_lib.export_results(scene, results, out, files)
    names = {p.name for p in report.written}
    assert names == {"MAEDiffT2Sample_heatmap.nii.gz", "MAEDiffT2Sample_lesions.nii.gz",
                     "MAEDiffT2Sample_lesions.seg.nrrd", "MAEDiffT2Sample_lesions_seg.dcm"}, report.text()
    labels = sitk.ReadImage(str(out / "MAEDiffT2Sample_lesions.nii.gz"))
    sample = sitk.ReadImage(str(sample_paths()[0]))
    assert labels.GetSize() == sample.GetSize()
    np.testing.assert_allclose(labels.GetDirection(), sample.GetDirection(), atol=1e-5)
    import pydicom

    seg = pydicom.dcmread(out / "MAEDiffT2Sample_lesions_seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(results.rows)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    back = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out / "MAEDiffT2Sample_lesions.seg.nrrd"))
    assert storage.ReadData(back) and back.GetSegmentation().GetNumberOfSegments() == len(results.rows)


@pytest.mark.skipif(RELEASE == "5.10", reason=DICOM_SEG_ON_5_10)
def test_dicom_seg_follows_the_series_order_and_takes_multiframe(run):
    import highdicom as hd
    import pydicom

    results = run["results"]
    files = dicom_series_of(run)
    labels = scene_lib.lesion_label_array(results)
    origins = scene_lib.slice_origins_lps(results.heatmap)
    out = run["folder"] / "seg"
    with pytest.raises(ValueError, match="not in the volume's slice order"):
        scene_lib.export_dicom_seg(labels, results.rows, list(reversed(files)), out / "bad.dcm", origins)
    # A scanner's enhanced (multi-frame) series: one file, one frame per slice.
    single = [pydicom.dcmread(f) for f in files]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(single, series_instance_uid=hd.UID(), series_number=7,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    out.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(out / "enhanced.dcm")
    path = scene_lib.export_dicom_seg(labels, results.rows, [str(out / "enhanced.dcm")], out / "multi.dcm", origins)
    seg = pydicom.dcmread(path)
    assert len(seg.SegmentSequence) == len(results.rows)


def test_no_lesions_is_a_message_not_a_failure(run):
    scene, results = run["scene"], run["results"]
    rows = scene_lib.update_threshold(scene, results, 2.0 * results.score_max + 1.0)
    assert rows == []
    report = scene_lib.export_results(scene, results, run["folder"] / "empty", dicom_series_of(run))
    assert {p.name for p in report.written} == {"MAEDiffT2Sample_heatmap.nii.gz", "MAEDiffT2Sample_lesions.nii.gz"}
    reasons = dict(report.skipped)
    assert reasons["MAEDiffT2Sample_lesions_seg.dcm"].startswith("no lesion candidates at threshold")
    assert reasons["MAEDiffT2Sample_lesions.seg.nrrd"].startswith("no lesion candidates at threshold")
    scene_lib.update_threshold(scene, results, results.threshold)


def test_cancel_stops_the_detector_behind_the_launcher(run, launch, tmp_path):
    input_path = scene_lib.write_node(run["scene"], run["input"], tmp_path / "input.nrrd")
    marker = str(tmp_path / "cancelled-output")
    process = DetectionProcess(DetectRequest(input_path, marker, device="cpu"), run["python"], launch)
    deadline = time.time() + 120
    while process.progress.stage in ("starting", "load") and time.time() < deadline:
        process.poll()
        time.sleep(0.1)
    assert process.progress.stage == "preprocess"
    process.cancel()
    assert process.finished() == (False, "cancelled")
    deadline = time.time() + 10
    while time.time() < deadline and detectors_writing_to(marker):
        time.sleep(0.2)
    assert not detectors_writing_to(marker), "the detector outlived its launcher"


def detectors_writing_to(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_device_query_through_the_launcher(run, launch):
    query = CoreProcess(core_command(run["python"], "device"), launch)
    assert query.wait() == 0, query.error_text()
    assert device_summary(query.output).startswith(("No CUDA GPU", "GPU:"))
