"""The Slicer module's scene logic on the real MRML library (PyPI's slicer-core): a real detection
subprocess, output nodes on the input's geometry, the threshold slider, export, cancel, rendering."""

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from MAEDiffAnomalyLib import scene as scene_lib
from MAEDiffAnomalyLib.runner import DetectionProcess, DetectRequest


def matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


@pytest.fixture(scope="module")
def detected(detection_run):
    """The shared detection run, with the input placed in a study of the subject hierarchy."""
    scene, input_node = detection_run["scene"], detection_run["input"]
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(input_node) or hierarchy.CreateItem(study, input_node), study)
    return {**detection_run, "study": study, "stages": [stage for stage, _ in detection_run["events"]]}


def test_progress_reaches_the_module(detected):
    assert {"preprocess", "reconstruct", "done"} <= set(detected["stages"])


def test_results_sit_on_the_input_geometry(detected):
    scene, input_node = detected["scene"], detected["input"]
    before = slicer.util.arrayFromVolume(input_node).copy()
    results = scene_lib.load_results(scene, input_node, detected["result_dir"])
    for node in (results.heatmap, results.reconstruction):
        assert node.GetImageData().GetDimensions() == input_node.GetImageData().GetDimensions()
        np.testing.assert_allclose(matrix(node), matrix(input_node), atol=1e-4)
    assert results.heatmap.GetName() == "patient T2 anomaly heatmap"
    assert results.reconstruction.GetName() == "patient T2 reconstruction"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(input_node), before)  # input untouched

    summary = json.loads((detected["result_dir"] / "lesions.json").read_text())
    segmentation = results.lesions.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == summary["lesion_count"] > 0
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == sorted(f"Lesion {i}" for i in range(1, summary["lesion_count"] + 1))
    assert "SCT^52988006^Lesion" in segmentation.GetNthSegment(0).GetTerminology()
    assert results.lesions.GetSegmentation().GetConversionParameter("Reference image geometry")

    table = results.table.GetTable()
    assert table.GetNumberOfRows() == summary["lesion_count"]
    assert [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())] == list(scene_lib.TABLE_COLUMNS)
    assert table.GetValue(0, 1).ToDouble() == pytest.approx(summary["lesions"][0]["volume_ml"], rel=1e-6)

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    for node in (results.heatmap, results.reconstruction, results.lesions, results.table):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == detected["study"]

    # Running again on the same input replaces, never duplicates.
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    again = scene_lib.load_results(scene, input_node, detected["result_dir"])
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    assert scene.GetFirstNodeByName("patient T2 anomaly heatmap") is again.heatmap
    detected["results"] = again


def test_threshold_slider_relabels_without_rerunning(detected):
    scene, results = detected["scene"], detected["results"]
    low = scene_lib.update_threshold(scene, results, 0.5 * results.threshold)
    high = scene_lib.update_threshold(scene, results, 4.0 * results.threshold)
    assert sum(r["voxels"] for r in low) > sum(r["voxels"] for r in high)
    assert results.lesions.GetSegmentation().GetNumberOfSegments() == len(high)
    assert results.table.GetTable().GetNumberOfRows() == len(high)
    scene_lib.update_threshold(scene, results, 0.05)


def test_export_reads_back_with_geometry(detected):
    scene, results = detected["scene"], detected["results"]
    out = detected["folder"] / "export"
    written = scene_lib.export_results(scene, results, out)
    assert {p.name for p in written} == {"patient_T2_lesions.seg.nrrd", "patient_T2_heatmap.nii.gz",
                                         "patient_T2_lesions.nii.gz"}
    labels = sitk.ReadImage(str(out / "patient_T2_lesions.nii.gz"))
    phantom = detected["phantom"].image
    assert labels.GetSize() == phantom.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), phantom.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(labels.GetDirection(), phantom.GetDirection(), atol=1e-5)
    assert sitk.GetArrayFromImage(labels).max() == len(results.rows)
    back = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out / "patient_T2_lesions.seg.nrrd"))
    assert storage.ReadData(back)
    assert back.GetSegmentation().GetNumberOfSegments() == len(results.rows)


def test_rendered_overlay_colours_the_lesion(detected):
    scene, results = detected["scene"], detected["results"]
    ras = scene_lib.lesion_position(results, 0)
    path = scene_lib.render_slice(scene, results, detected["folder"] / "overlay.png", ras=ras, opacity=0.6)
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1).astype(int)
    centre = pixels[height // 2 - 2:height // 2 + 3, width // 2 - 2:width // 2 + 3]
    assert (centre[..., 0] - centre[..., 2]).mean() > 30  # heat colour (red over blue) at the lesion
    grey = pixels[5:15, 5:15]
    assert np.abs(grey[..., 0] - grey[..., 2]).max() < 5  # away from the brain: no colour


def test_cancel_leaves_the_scene_unchanged(detected, tiny_model):
    scene, input_node = detected["scene"], detected["input"]
    nodes = scene.GetNumberOfNodes()
    temp_input = scene_lib.write_node(scene, input_node, detected["folder"] / "cancel" / "input.nrrd")
    process = DetectionProcess(DetectRequest(temp_input, detected["folder"] / "cancel" / "out",
                                             model_path=tiny_model, device="cpu"))
    deadline = time.time() + 120
    while process.poll().stage == "starting" and time.time() < deadline:
        time.sleep(0.1)
    process.cancel()
    assert not process.running
    assert process.finished() == (False, "cancelled")
    assert scene.GetNumberOfNodes() == nodes
    assert not (detected["folder"] / "cancel" / "out" / "input" / "lesions.json").exists()


def test_detection_error_is_reported(detected, tiny_model):
    missing = detected["folder"] / "nothing.nrrd"
    process = DetectionProcess(DetectRequest(missing, detected["folder"] / "bad", model_path=tiny_model))
    while process.running:
        time.sleep(0.1)
    ok, error = process.finished()
    assert not ok and "no such file" in error
