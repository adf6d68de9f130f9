"""A radiologist's path through the module in Slicer's own Python: the built module folder only,
the bundled sample and model, the first Detect's install (ONNX Runtime, offline), detection started
as Slicer starts it, on ONNX Runtime with no torch or MONAI in this Python, results loaded into the
MRML scene, the threshold slider, export to NIfTI, .seg.nrrd and DICOM SEG."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer_standins as standins
import vtk
from conftest import FIRST_DETECT_INSTALLS, MODULE, PINS, RELEASE
from dicom_series import write_dicom_series

from maediff_core.resources import default_model_path, resources_dir, sample_paths
from MAEDiffAnomalyLib import dependencies, model_card
from MAEDiffAnomalyLib import scene as scene_lib


def pinned() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in PINS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


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


def test_slicer_packages_are_slicers_and_only_the_installers_were_added(fresh_slicer):
    for name, version in pinned().items():
        assert importlib.metadata.version(name) == version, name
    for name in ("tqdm", "tensorboard", "matplotlib", "sklearn"):  # Slicer ships none of them
        assert importlib.util.find_spec(name) is None, f"{name} is installed: the test would not notice a need"
    # A fresh Slicer without the PyTorch extension: the first Detect (the run below) installs ONNX Runtime.
    assert not dependencies.torch_available() and importlib.util.find_spec("monai") is None
    # torch and MONAI are not installed, and blocked from import here and in every child (the detector):
    # the Makefile's without-torch.pth, so that no path leaking in from elsewhere could supply them.
    child = "import sys, importlib.util as u; print([(sys.modules[n], u.find_spec(n)) for n in ('torch', 'monai')])"
    for name in ("torch", "monai"):
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(name)
        assert name in sys.modules and sys.modules[name] is None
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
    assert subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          check=True).stdout.strip() == "[(None, None), (None, None)]"
    assert dependencies.missing("onnx") == ["onnxruntime"]
    # Without torch, auto takes ONNX Runtime; a GPU is still torch's (the panel then asks for the extension).
    assert dependencies.runtime_for("auto", "auto") == "onnx" and dependencies.runtime_for("auto", "cuda") == "torch"
    assert dependencies.runtime_for("onnx", "cpu") == "onnx" and dependencies.runtime_for("torch", "cpu") == "torch"


@pytest.fixture(scope="module")
def panel(tmp_path_factory, python_slicer, fresh_slicer):
    """The module's panel, imported from the module folder as Slicer imports it. Qt, the .ui loader
    and the parameter-node binding are stand-ins (slicer_standins.py); slicer.util, the MRML scene
    and everything the module calls are real."""
    standins.install(MODULE, tmp_path_factory.mktemp("slicer-app"), version=tuple(int(p) for p in RELEASE.split(".")))
    scene_lib.headless_scene()
    import MAEDiffAnomaly

    assert MAEDiffAnomaly.__file__ == str(MODULE / "MAEDiffAnomaly.py")
    widget = MAEDiffAnomaly.MAEDiffAnomalyWidget()
    widget.setup()
    assert not standins.UNCAUGHT, standins.UNCAUGHT
    return widget


@pytest.fixture(scope="module")
def run(panel, tmp_path_factory, python_slicer):
    """Sample Data -> MAEDiffT2Sample (its file URI into the cache, checksum checked), in a study
    and under a transform; MAEDiff Anomaly -> Detect anomalies, as a user clicks it."""
    scene = slicer.mrmlScene
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
    before = slicer.util.arrayFromVolume(input_node).copy()

    parameters = panel._parameterNode
    parameters.inputVolume = input_node
    parameters.device = "cpu"
    # Slicer 5.12 (current): the card's operating point, as a user gets it. Slicer 5.10: the same
    # stride (48, 4 patch positions per slice) as the user's own choice, which goes on the command line.
    parameters.stride = model_card.MODEL_DEFAULT if RELEASE == "5.12" else "48"
    start = time.perf_counter()
    panel.ui.applyButton.emit("clicked(bool)", False)
    install, statuses = panel.install, []  # the first Detect of a fresh Slicer: pip in a child, the panel live
    assert install is not None, (standins.DIALOGS, standins.UNCAUGHT)
    assert panel.ui.applyButton.text == "Cancel" and panel.ui.statusLabel.text.startswith("Installing")
    standins.drive(panel, lambda: statuses.append(panel.ui.statusLabel.text) or panel.install is None, 300)
    install_seconds = time.perf_counter() - start
    started = panel.run
    assert started is not None, (standins.DIALOGS, standins.UNCAUGHT, install and install.log)
    input_node.SetName("renamed during the run")  # the results keep the name the run started with
    standins.drive(panel, lambda: panel.run is None)
    seconds = time.perf_counter() - start
    assert panel.results is not None, (standins.DIALOGS, standins.UNCAUGHT, started.process.log[-20:])
    print(f"\nSlicer {RELEASE}: Detect click to results {seconds:.0f} s (the install {install_seconds:.0f} s), "
          f"{len(panel.results.rows)} candidates, {panel.ui.statusLabel.text}")
    return {"scene": scene, "input": input_node, "transform": transform, "study": study, "process": started.process,
            "install": install, "statuses": statuses, "status": panel.ui.statusLabel.text,
            "results": panel.results, "truth": sitk.ReadImage(str(truth)), "folder": folder,
            "input_unchanged": np.array_equal(before, slicer.util.arrayFromVolume(input_node)),
            "python": python_slicer}


def test_the_panel_shows_the_bundled_model_from_the_module_folder(panel):
    assert panel._parameterNode.modelPath == MODULE / "Resources" / "models" / "maediff-small-demo.json"
    assert "maediff-small (maediff)" in panel.ui.modelCardLabel.text and panel.ui.syntheticWarningLabel.visible
    assert panel.ui.applyButton.text == "Detect anomalies"


def test_the_first_detect_installs_onnx_runtime_offline_and_detects_on_it(run):
    record = json.loads((run["results"].result_dir / "lesions.json").read_text())
    install = run["install"]
    assert install.error is None and record["runtime"] == "onnx" and "(ONNX Runtime on the CPU)" in run["status"]
    # pip ran through the launcher, from the module's wheels alone: the index was unreachable.
    assert all(c[0] == run["python"] and "--no-index" in c and str(MODULE / "wheels") in c for c in install.commands)
    assert any(line.startswith("Successfully installed") and "onnxruntime-" in line for line in install.log)
    assert any("Installing ONNX Runtime:" in text for text in run["statuses"])  # pip's lines reached the panel
    for name in FIRST_DETECT_INSTALLS:
        assert importlib.metadata.version(name)
    assert importlib.util.find_spec("torch") is None and sys.modules["torch"] is None  # still blocked, never imported


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
    hits = [row["label"] for row in results.rows
            if np.count_nonzero(truth[labels == row["label"]]) > 0.5 * row["voxels"]]
    # What `maediff demo --record` measured with the bundled model on torch, as its card (and the README) says:
    # the same noise on both runtimes; only the registration's threads move the image between runs.
    recorded = model_card.read_card(default_model_path())["metrics"]["sample"]
    print(f"\nSlicer {RELEASE}: Dice {100 * dice:.1f} % on ONNX Runtime against the known lesion (torch, as the "
          f"card records it: {100 * recorded['dice']['mean']:.1f} %); candidates on it: {hits}")
    assert hits, "no lesion candidate lies on the known lesion"
    assert abs(dice - recorded["dice"]["mean"]) <= 0.01
    assert abs(len(results.rows) - recorded["lesions"]["mean"]) <= 2  # a component may split in other numpy


def test_threshold_slider_updates_in_place(run):
    scene, results = run["scene"], run["results"]
    segmentation = results.lesions.GetSegmentation()
    user = segmentation.AddEmptySegment("my_note", "checked by reader")
    before = sum(r["voxels"] for r in results.rows)
    original = results.threshold
    # Stricter, and still some lesions of the operating point's smallest size, whatever the model:
    # from halfway to the strongest lesion's peak down towards the run's threshold.
    strongest = max(r["max_score"] for r in results.rows)
    for share in (0.5, 0.25, 0.1, 0.05):
        start = time.perf_counter()
        stricter = scene_lib.update_threshold(scene, results, original + share * (strongest - original))
        seconds = time.perf_counter() - start
        if stricter:
            break
    print(f"\nthreshold update {seconds:.2f} s on {results.heat.GetSize()} voxels")
    if not stricter:
        scene_lib.update_threshold(scene, results, original)  # the lesions again, for the tests after
    assert stricter and sum(r["voxels"] for r in stricter) < before
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert user in ids and len(ids) == len(stricter) + 1  # the reader's segment is kept
    exported = scene_lib.lesion_label_array(results)
    for row in stricter:
        assert np.count_nonzero(exported == row["label"]) == row["voxels"]
    first = segmentation.GetSegment(f"{scene_lib.LESION_ID}1")
    first.SetColor(0.0, 0.0, 1.0)  # the user recoloured lesion 1: a new threshold keeps the segment
    scene_lib.update_threshold(scene, results, original)
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


def test_export_button_writes_every_format(run, panel):
    """Export from the panel for a volume loaded from the DICOM database (a stand-in database that
    maps the volume's instance UIDs to its files, as Slicer's does)."""
    import pydicom

    scene, results = run["scene"], run["results"]
    files = dicom_series_of(run)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    run["input"].SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    slicer.dicomDatabase = types.SimpleNamespace(fileForInstance=dict(zip(uids, files, strict=True)).get)
    out = run["folder"] / "export"
    panel._parameterNode.exportFolder = out
    standins.DIALOGS.clear()
    panel.ui.exportButton.emit("clicked(bool)", False)
    assert not standins.UNCAUGHT, standins.UNCAUGHT
    written = {p.name for p in out.iterdir()}
    expected = {"MAEDiffT2Sample_heatmap.nii.gz", "MAEDiffT2Sample_lesions.nii.gz", "MAEDiffT2Sample_lesions.seg.nrrd"}
    if RELEASE == "5.10":  # DICOM SEG is not written, and the panel says why
        assert written == expected
        assert "pydicom 3" in panel.ui.statusLabel.text and standins.DIALOGS[-1][0] == "info"
        return
    assert written == expected | {"MAEDiffT2Sample_lesions_seg.dcm"}, panel.ui.statusLabel.text
    labels = sitk.ReadImage(str(out / "MAEDiffT2Sample_lesions.nii.gz"))
    sample = sitk.ReadImage(str(sample_paths()[0]))
    assert labels.GetSize() == sample.GetSize()
    np.testing.assert_allclose(labels.GetDirection(), sample.GetDirection(), atol=1e-5)
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
    threshold = results.threshold
    rows = scene_lib.update_threshold(scene, results, 2.0 * results.score_max + 1.0)
    assert rows == []
    report = scene_lib.export_results(scene, results, run["folder"] / "empty", dicom_series_of(run))
    assert {p.name for p in report.written} == {"MAEDiffT2Sample_heatmap.nii.gz", "MAEDiffT2Sample_lesions.nii.gz"}
    reasons = dict(report.skipped)
    assert reasons["MAEDiffT2Sample_lesions_seg.dcm"].startswith("no lesion candidates at threshold")
    assert reasons["MAEDiffT2Sample_lesions.seg.nrrd"].startswith("no lesion candidates at threshold")
    assert scene_lib.update_threshold(scene, results, threshold)  # the lesions again, for the tests after


def test_a_lesion_click_jumps_to_it_in_world_coordinates(run, panel):
    """The input sits under a transform: the slice views must go where the lesion is shown."""
    transform, results = run["transform"], run["results"]
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 30.0)
    shift.SetElement(2, 3, -12.0)
    transform.SetMatrixTransformToParent(shift)
    jumps = []
    slicer.modules = types.SimpleNamespace(markups=types.SimpleNamespace(logic=lambda: types.SimpleNamespace(
        JumpSlicesToLocation=lambda x, y, z, centered: jumps.append((x, y, z)))))
    try:
        panel.ui.lesionTableView.emit("clicked(QModelIndex)", types.SimpleNamespace(row=lambda: 0))
    finally:
        transform.SetMatrixTransformToParent(vtk.vtkMatrix4x4())
        del slicer.modules
    local = results.rows[0]["centroid_ras_mm"]
    np.testing.assert_allclose(jumps, [(local[0] + 30.0, local[1], local[2] - 12.0)], atol=1e-6)


def test_export_leaves_no_node_behind(run, panel):
    """Exporting a segmentation to a label map adds a `<name>_ColorTable` node: it must not stay in the
    scene (and be saved with it)."""
    scene = run["scene"]

    def nodes() -> dict[str, str]:
        return {scene.GetNthNode(i).GetID(): f"{scene.GetNthNode(i).GetClassName()} {scene.GetNthNode(i).GetName()}"
                for i in range(scene.GetNumberOfNodes())}

    before = nodes()
    panel._parameterNode.exportFolder = run["folder"] / "export-again"
    panel.ui.exportButton.emit("clicked(bool)", False)
    scene_lib.update_threshold(scene, run["results"], run["results"].threshold)
    after = nodes()
    assert after.keys() == before.keys(), [after[i] for i in after.keys() - before.keys()]


def test_cancel_in_the_first_second_returns_at_once_and_stops_the_detector(run, panel):
    """Cancelled while the detector still imports torch: the panel answers at once (no wait on the
    pipe) and the detector stops, though it had not yet started to watch its launcher."""
    panel.ui.applyButton.emit("clicked(bool)", False)
    marker = str(panel.run.work)
    time.sleep(1.0)
    start = time.perf_counter()
    panel.ui.applyButton.emit("clicked(bool)", False)  # Cancel
    assert time.perf_counter() - start < 2.0 and panel.ui.statusLabel.text == "Cancelled"
    deadline = time.time() + 10
    while time.time() < deadline and detectors_writing_to(marker):
        time.sleep(0.2)
    assert not detectors_writing_to(marker), "the detector outlived its launcher"


def test_cancel_stops_the_detector_behind_the_launcher(run, panel):
    panel.ui.applyButton.emit("clicked(bool)", False)
    marker = str(panel.run.work)
    standins.drive(panel, lambda: panel.run is None or panel.run.process.progress.stage == "preprocess", 120)
    assert detectors_writing_to(marker)
    panel.ui.applyButton.emit("clicked(bool)", False)  # Cancel
    assert panel.run is None and panel.ui.statusLabel.text == "Cancelled"
    deadline = time.time() + 10
    while time.time() < deadline and detectors_writing_to(marker):
        time.sleep(0.2)
    assert not detectors_writing_to(marker), "the detector outlived its launcher"
    assert panel.results is run["results"]  # the earlier results stay


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


def test_check_device_through_the_launcher(panel):
    panel.ui.detectDeviceButton.emit("clicked(bool)", False)
    standins.drive(panel, lambda: panel.deviceQuery is None, 120)
    text = panel.ui.deviceInfoLabel.text
    assert text.startswith(("CPU: ONNX Runtime", "GPU:")), text
    assert "no PyTorch" in text, text  # torch is optional: the query runs without it
