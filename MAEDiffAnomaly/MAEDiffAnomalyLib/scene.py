"""Results of ``maediff detect`` as MRML nodes: heatmap overlay, reconstruction, one segment per
lesion, a lesion table; the threshold slider; export. Needs only the MRML library (no Qt), so the
same code runs in Slicer and on PyPI's ``slicer-core`` in the tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

ROLE = "MAEDiffAnomaly.Role"  # node attribute: heatmap | reconstruction | lesions | table | labels
INPUT = "MAEDiffAnomaly.InputNodeID"
RESULT_DIR = "MAEDiffAnomaly.ResultDir"
ROLES = ("heatmap", "reconstruction", "lesions", "table")
HEAT_TABLE = "MAEDiffAnomaly heat"
# Segment terminology: SNOMED CT "Morphologically altered structure" / "Lesion".
TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list"
               "~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~^^~"
               "Anatomic codes - DICOM master list~^^~^^")
COMPARE_LAYOUT_ID = 5301  # a custom layout: input | reconstruction | heatmap, three axial views
COMPARE_LAYOUT = "<layout type=\"horizontal\">" + "".join(
    f"<item><view class=\"vtkMRMLSliceNode\" singletontag=\"{name}\">"
    f"<property name=\"orientation\" action=\"default\">Axial</property>"
    f"<property name=\"viewlabel\" action=\"default\">{label}</property>"
    f"<property name=\"viewcolor\" action=\"default\">{colour}</property></view></item>"
    for name, label, colour in (("Red", "Input", "#F34A33"), ("Yellow", "Healthy", "#EDD54C"),
                                ("Green", "Heatmap", "#6EB04B"))) + "</layout>"
TABLE_COLUMNS = ("Lesion", "Volume (mL)", "Max score", "Mean score", "R (mm)", "A (mm)", "S (mm)")


def headless_scene():
    """Outside the Slicer application (tests, scripts): a scene with the application and colour
    logic that Slicer sets up, so that default colour tables exist."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLScene(scene)
    application.SetModuleLogic("Colors", colours)
    headless_scene.keep = (application, colours)  # the logic must outlive this call
    return scene


@dataclass
class Results:
    """The output nodes of one run and what the threshold slider needs to relabel them."""

    input: object
    heatmap: object
    reconstruction: object
    lesions: object
    table: object
    result_dir: Path
    score: np.ndarray  # model-space score (z, y, x)
    record: dict  # the preprocessing record: the way back to the input grid
    threshold: float
    rows: list[dict]


# -- files <-> nodes ------------------------------------------------------------------------------

def read_volume_node(scene, path: str | Path, name: str, labelmap: bool = False):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok:
        scene.RemoveNode(node)
        raise OSError(f"cannot read {path}")
    return node


def write_node(scene, node, path: str | Path) -> Path:
    """Write a volume or segmentation node through its storage node class, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.partial{suffix}")
    storage_class = ("vtkMRMLSegmentationStorageNode" if node.IsA("vtkMRMLSegmentationNode")
                     else "vtkMRMLVolumeArchetypeStorageNode")
    storage = scene.AddNewNodeByClass(storage_class)
    try:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise OSError(f"cannot write {path}")
        os.replace(tmp, path)
    finally:
        scene.RemoveNode(storage)
        if tmp.exists():
            tmp.unlink()
    return path


# -- building the results -------------------------------------------------------------------------

def heat_color_table(scene):
    """Black -> red -> yellow -> white, built in code (file-based tables are not in every build)."""
    existing = scene.GetFirstNodeByName(HEAT_TABLE)
    if existing is not None:
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEAT_TABLE)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for i in range(256):
        x = i / 255.0
        table.SetColor(i, "", min(1.0, 3 * x), min(1.0, max(0.0, 3 * x - 1)), min(1.0, max(0.0, 3 * x - 2)), 1.0)
    table.SetAttribute("Category", "MAEDiffAnomaly")
    return table


def previous_outputs(scene, input_node) -> list:
    nodes = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.GetAttribute(INPUT) == input_node.GetID() and node.GetAttribute(ROLE):
            nodes.append(node)
    return nodes


def load_results(scene, input_node, result_dir: str | Path) -> Results:
    """Make the output nodes of a finished run, replacing this input's earlier outputs."""
    import SimpleITK as sitk

    from maediff_core.volume_io import read_volume

    result_dir = Path(result_dir)
    summary = json.loads((result_dir / "lesions.json").read_text())
    record = json.loads((result_dir / "model_space" / "record.json").read_text())
    score = sitk.GetArrayFromImage(read_volume(result_dir / "model_space" / "heatmap.nii.gz"))
    for node in previous_outputs(scene, input_node):
        scene.RemoveNode(node)
    name = input_node.GetName()
    heatmap = read_volume_node(scene, result_dir / "heatmap.nii.gz", f"{name} anomaly heatmap")
    reconstruction = read_volume_node(scene, result_dir / "reconstruction.nii.gz", f"{name} reconstruction")
    lesions = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} lesions")
    lesions.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    lesions.CreateDefaultDisplayNodes()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} lesion table")
    for role, node in zip(ROLES, (heatmap, reconstruction, lesions, table)):
        node.SetAttribute(ROLE, role)
        node.SetAttribute(INPUT, input_node.GetID())
        node.SetAttribute(RESULT_DIR, str(result_dir))

    display = _display(heatmap)
    display.SetAndObserveColorNodeID(heat_color_table(scene).GetID())
    display.SetAutoWindowLevel(False)
    top = max(float(score.max()), 1e-6)
    display.SetWindowLevelMinMax(0.0, top)
    display.SetApplyThreshold(True)  # below half the threshold: transparent over the input
    display.SetLowerThreshold(0.5 * summary["threshold"])
    display.SetUpperThreshold(top * 10)
    input_display = input_node.GetDisplayNode()
    if input_display is not None:  # the reconstruction looks like the input: same colours and window
        shown = _display(reconstruction)
        shown.SetAndObserveColorNodeID(input_display.GetColorNodeID())
        shown.SetAutoWindowLevel(False)
        shown.SetWindowLevel(input_display.GetWindow(), input_display.GetLevel())

    results = Results(input_node, heatmap, reconstruction, lesions, table, result_dir, score, record,
                      summary["threshold"], [])
    labels_path = result_dir / "lesions.nii.gz"
    _fill_lesions(scene, results, read_volume_node(scene, labels_path, f"{name} lesion labels", labelmap=True),
                  summary["lesions"])
    place_under_input_study(scene, input_node, [heatmap, reconstruction, lesions, table])
    return results


def _display(volume):
    if volume.GetDisplayNode() is None:
        volume.CreateDefaultDisplayNodes()
    return volume.GetDisplayNode()


def _fill_lesions(scene, results: Results, label_node, rows: list[dict]) -> None:
    """Segments "Lesion 1..n" from a label volume on the input grid, and the table rows."""
    segmentation = results.lesions.GetSegmentation()
    segmentation.RemoveAllSegments()
    if rows:
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(label_node, results.lesions, ""):
            raise RuntimeError("could not turn the lesion labels into segments")
    scene.RemoveNode(label_node)
    colours = _lesion_colours(len(rows))
    by_label = {row["label"]: row for row in rows}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        label = segment.GetLabelValue()
        segment.SetName(f"Lesion {label}")
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*colours[label - 1])
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(TERMINOLOGY)
        row = by_label[label]
        segment.SetTag("MAEDiffAnomaly.VolumeML", f"{row['volume_ml']:.3f}")
        segment.SetTag("MAEDiffAnomaly.MaxScore", f"{row['max_score']:.4f}")
    results.rows = rows
    fill_table(results.table, rows)


def _lesion_colours(count: int) -> list[tuple[float, float, float]]:
    """Distinct, saturated colours: the largest lesion first, by the golden-ratio hue walk."""
    import colorsys

    return [colorsys.hsv_to_rgb((0.02 + 0.618034 * i) % 1.0, 0.85, 0.95) for i in range(count)]


def fill_table(table, rows: list[dict]) -> None:
    data = vtk.vtkTable()
    names = vtk.vtkStringArray()
    names.SetName(TABLE_COLUMNS[0])
    columns = [names]
    for title in TABLE_COLUMNS[1:]:
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        columns.append(column)
    for row in rows:
        names.InsertNextValue(f"Lesion {row['label']}")
        values = [row["volume_ml"], row["max_score"], row["mean_score"], *row["centroid_ras_mm"]]
        for column, value in zip(columns[1:], values):
            column.InsertNextValue(float(value))
    for column in columns:
        data.AddColumn(column)
    table.SetAndObserveTable(data)
    table.SetUseColumnTitleAsColumnHeader(True)


def update_threshold(scene, results: Results, threshold: float) -> list[dict]:
    """Recompute the lesions at ``threshold`` from the stored score: no new model run."""
    import SimpleITK as sitk

    from maediff_core.writeback import native_lesions

    labels, rows = native_lesions(results.score, threshold, results.record)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion labels")
    slicer.util.updateVolumeFromArray(label_node, sitk.GetArrayFromImage(labels).astype(np.int16))
    label_node.CopyOrientation(results.input)
    _fill_lesions(scene, results, label_node, rows)
    results.threshold = threshold
    display = results.heatmap.GetDisplayNode()
    display.SetLowerThreshold(0.5 * threshold)
    return rows


def place_under_input_study(scene, input_node, nodes: list) -> None:
    """Outputs go where the input sits in the subject hierarchy (its study, for DICOM data)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    input_item = hierarchy.GetItemByDataNode(input_node)
    parent = hierarchy.GetItemParent(input_item) if input_item else hierarchy.GetSceneItemID()
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
        hierarchy.SetItemParent(item, parent)


def show_overlay(scene, results: Results, opacity: float = 0.5) -> None:
    """Input as background, heatmap as foreground, lesion outlines, in every slice view."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(results.input.GetID())
        composite.SetForegroundVolumeID(results.heatmap.GetID())
        composite.SetForegroundOpacity(opacity)
    display = results.lesions.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)


def register_compare_layout(layout_node) -> int:
    """Add the compare layout to the layout node (once); returns its id for setLayout."""
    if not layout_node.IsLayoutDescription(COMPARE_LAYOUT_ID):
        layout_node.AddLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT)
    return COMPARE_LAYOUT_ID


def lesion_position(results: Results, row_index: int) -> list[float]:
    """RAS centroid of a table row, for jumping the slice views to it."""
    return list(results.rows[row_index]["centroid_ras_mm"])


# -- export ---------------------------------------------------------------------------------------

def export_results(scene, results: Results, folder: str | Path, dicom_files: list[str] | None = None) -> list[Path]:
    """Segmentation .seg.nrrd, labelmap and heatmap .nii.gz, and DICOM SEG for DICOM inputs."""
    folder = Path(folder)
    name = _safe(results.input.GetName())
    written = [write_node(scene, results.lesions, folder / f"{name}_lesions.seg.nrrd"),
               write_node(scene, results.heatmap, folder / f"{name}_heatmap.nii.gz")]
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} lesion labels")
    try:
        slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
            results.lesions, label_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        written.append(write_node(scene, label_node, folder / f"{name}_lesions.nii.gz"))
        if dicom_files:
            labels = slicer.util.arrayFromVolume(label_node)
            written.append(export_dicom_seg(labels, results.rows, dicom_files, folder / f"{name}_lesions_seg.dcm"))
    finally:
        scene.RemoveNode(label_node)
    return written


def export_dicom_seg(labels: np.ndarray, rows: list[dict], dicom_files: list[str], path: Path) -> Path:
    """DICOM SEG (highdicom) of the lesion labels over the source series, slice by slice."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in dicom_files]
    normal = np.cross(*np.array(sources[0].ImageOrientationPatient, float).reshape(2, 3))
    sources.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    if labels.shape != (len(sources), sources[0].Rows, sources[0].Columns):
        raise ValueError(f"labels {labels.shape} do not match the DICOM series "
                         f"({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    if not rows:
        raise ValueError("no lesion to export as DICOM SEG")
    algorithm = hd.AlgorithmIdentificationSequence(name="MAEDiffAnomaly", version="0.1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=row["label"], segment_label=f"Lesion {row['label']}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for row in rows]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels.astype(np.uint16), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MAEDiffAnomaly",
        manufacturer_model_name="MAEDiff", software_versions="0.1", device_serial_number="none",
        series_description="MAEDiff anomaly lesions")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    seg.save_as(tmp)
    os.replace(tmp, path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -- looking at it ---------------------------------------------------------------------------------

def render_slice(scene, results: Results, path: str | Path, ras: list[float] | None = None,
                 size: int = 384, opacity: float = 0.5) -> Path:
    """An axial slice view (input, heatmap overlay) rendered to PNG without OpenGL."""
    if not hasattr(slicer.vtkMRMLSliceNode, "AddDefaultSliceOrientationPresets"):
        raise RuntimeError("this MRML build cannot set slice orientations")
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.AddSliceNode("MAEDiffRender")
    slice_node = logic.GetSliceNode()
    slice_node.SetOrientation("Axial")
    slice_node.SetDimensions(size, size, 1)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(results.input.GetID())
    composite.SetForegroundVolumeID(results.heatmap.GetID())
    composite.SetForegroundOpacity(opacity)
    logic.FitSliceToAll()
    if ras is not None:
        slice_node.JumpSliceByCentering(*ras)
    connection = logic.GetImageDataConnection()
    connection.GetProducer().Update()
    writer = vtk.vtkPNGWriter()
    writer.SetInputConnection(connection)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.SetFileName(str(path))
    writer.Write()
    scene.RemoveNode(composite)
    scene.RemoveNode(slice_node)
    return path
