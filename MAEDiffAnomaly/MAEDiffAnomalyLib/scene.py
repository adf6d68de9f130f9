"""Results of ``maediff detect`` as MRML nodes: heatmap overlay, reconstruction, one segment per
lesion, a lesion table; the threshold slider; export. Needs only the MRML library (no Qt), so the
same code runs in Slicer and on PyPI's ``slicer-core`` in the tests.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

ROLE = "MAEDiffAnomaly.Role"  # node attribute: heatmap | reconstruction | lesions | table
INPUT = "MAEDiffAnomaly.InputNodeID"
RESULT_DIR = "MAEDiffAnomaly.ResultDir"
ROLES = ("heatmap", "reconstruction", "lesions", "table")
HEAT_TABLE = "MAEDiffAnomaly heat"
LESION_ID = "MAEDiffAnomaly_lesion_"  # + label: the segments this module made (users may add others)
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
    """Outside the Slicer application (tests, scripts): a scene with what Slicer sets up in every
    scene: the application and colour logic (so that default colour tables exist) and the subject
    hierarchy."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLScene(scene)
    application.SetModuleLogic("Colors", colours)
    headless_scene.keep = (application, colours)  # the logic must outlive this call
    return scene


@dataclass
class Placement:
    """Where an input sits in the scene, taken when a run starts: the results go there even if the
    user selects another volume, moves or renames this one while the run goes on."""

    input: object
    name: str
    transform_id: str | None
    parent_item: int  # subject hierarchy: the input's study (or folder), else the scene

    @classmethod
    def of(cls, scene, input_node) -> Placement:
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
        item = hierarchy.GetItemByDataNode(input_node)
        parent = hierarchy.GetItemParent(item) if item else hierarchy.GetSceneItemID()
        return cls(input_node, input_node.GetName(), input_node.GetTransformNodeID(), parent)


@dataclass
class Results:
    """The output nodes of one run and what the threshold slider needs to relabel them."""

    placement: Placement
    heatmap: object
    reconstruction: object
    lesions: object
    table: object
    result_dir: Path
    score: np.ndarray  # model-space score (z, y, x)
    heat: object  # the score on the input grid (SimpleITK image)
    record: dict  # the preprocessing record: the way back to the input grid
    threshold: float
    score_max: float
    rows: list[dict] = field(default_factory=list)
    min_voxels: int = 8  # the smallest lesion at the run's operating point (model-space voxels)
    summary: dict = field(default_factory=dict)  # the run's lesions.json: what ran it, its settings

    @property
    def input(self):
        return self.placement.input

    def threshold_range(self) -> tuple[float, float]:
        """Slider range: up to twice the model's threshold or the highest score, whichever is higher."""
        return 0.0, max(2.0 * self.threshold, self.score_max)

    def slider_step(self) -> tuple[float, int]:
        """A thousandth of the range, and the decimals that show it (at least 4): the scores of
        some models (MAD-AD's repair) lie far below 1."""
        low, high = self.threshold_range()
        step = (high - low) / 1000
        return step, max(4, math.ceil(-math.log10(step))) if step > 0 else 4


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


def load_results(scene, placement: Placement, result_dir: str | Path) -> Results:
    """Make the output nodes of a finished run where its input sat when the run started (its
    parent transform, its study), replacing that input's earlier outputs."""
    import SimpleITK as sitk

    from maediff_core.volume_io import read_volume

    result_dir = Path(result_dir)
    summary = json.loads((result_dir / "lesions.json").read_text())
    record = json.loads((result_dir / "model_space" / "record.json").read_text())
    score = sitk.GetArrayFromImage(read_volume(result_dir / "model_space" / "heatmap.nii.gz"))
    heat = sitk.ReadImage(str(result_dir / "heatmap.nii.gz"))
    input_node, name = placement.input, placement.name
    for node in previous_outputs(scene, input_node):
        scene.RemoveNode(node)
    heatmap = read_volume_node(scene, result_dir / "heatmap.nii.gz", f"{name} anomaly heatmap")
    reconstruction = read_volume_node(scene, result_dir / "reconstruction.nii.gz", f"{name} reconstruction")
    lesions = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} lesions")
    lesions.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    lesions.CreateDefaultDisplayNodes()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} lesion table")
    for role, node in zip(ROLES, (heatmap, reconstruction, lesions, table), strict=True):
        node.SetAttribute(ROLE, role)
        node.SetAttribute(INPUT, input_node.GetID())
        node.SetAttribute(RESULT_DIR, str(result_dir))
    for node in (heatmap, reconstruction, lesions):
        node.SetAndObserveTransformNodeID(placement.transform_id)

    score_max = float(summary.get("score_max", score.max()))
    display = _display(heatmap)
    display.SetAndObserveColorNodeID(heat_color_table(scene).GetID())
    display.SetAutoWindowLevel(False)
    top = max(score_max, 1e-6)
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

    results = Results(placement, heatmap, reconstruction, lesions, table, result_dir, score, heat, record,
                      summary["threshold"], score_max, min_voxels=summary.get("min_lesion_voxels", 8),
                      summary=summary)
    label_node = read_volume_node(scene, result_dir / "lesions.nii.gz", f"{name} lesion labels", labelmap=True)
    try:
        set_lesion_segments(results, label_node, summary["lesions"])
    finally:
        discard(scene, label_node)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    for node in (heatmap, reconstruction, lesions, table):
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(placement.parent_item, node)
        hierarchy.SetItemParent(item, placement.parent_item)
    return results


def _display(volume):
    if volume.GetDisplayNode() is None:
        volume.CreateDefaultDisplayNodes()
    return volume.GetDisplayNode()


def set_lesion_segments(results: Results, label_node, rows: list[dict]) -> None:
    """Segments "Lesion 1..n" from a label volume on the input grid, and the table rows.

    Updated in place: the module's segments share one labelmap layer whose voxels are replaced, a
    lesion keeps its segment (and its display settings) across thresholds, and segments a user
    added are left as they are.
    """
    segmentation = results.lesions.GetSegmentation()
    ours = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if segment_id.startswith(LESION_ID):
            ours[int(segment_id[len(LESION_ID):])] = segment_id
    labels = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(label_node)
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    wanted = {row["label"] for row in rows}
    if ours:
        first = next(iter(ours.values()))
        layer = segmentation.GetSegment(first).GetRepresentation(binary)
        for segment_id in segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(first, binary), binary):
            if not segment_id.startswith(LESION_ID):  # a user's segment in our layer: give it its own
                segmentation.SeparateSegmentLabelmap(segment_id)
        stale = [segment_id for label, segment_id in ours.items() if label not in wanted]
        if stale:
            # Removing a segment from a shared layer erases its voxels one by one (80 ms per segment
            # on 256^3): empty the layer first, its new voxels come next anyway.
            layer.ShallowCopy(slicer.vtkOrientedImageData())
            for segment_id in stale:
                segmentation.RemoveSegment(segment_id)
        layer.ShallowCopy(labels)
    else:
        layer = labels
    colours = _lesion_colours(len(rows))
    for row in rows:
        label = row["label"]
        segment = segmentation.GetSegment(ours[label]) if label in ours else None
        if segment is None:
            segment = slicer.vtkSegment()
            segment.AddRepresentation(binary, layer)
            segmentation.AddSegment(segment, f"{LESION_ID}{label}")
        segment.SetLabelValue(label)
        segment.SetName(f"Lesion {label}")
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*colours[label - 1])
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(TERMINOLOGY)
        segment.SetTag("MAEDiffAnomaly.VolumeML", f"{row['volume_ml']:.3f}")
        segment.SetTag("MAEDiffAnomaly.MaxScore", f"{row['max_score']:.4f}")
    layer.Modified()
    segmentation.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)
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
        for column, value in zip(columns[1:], values, strict=True):
            column.InsertNextValue(float(value))
    for column in columns:
        data.AddColumn(column)
    table.SetAndObserveTable(data)
    table.SetUseColumnTitleAsColumnHeader(True)


def update_threshold(scene, results: Results, threshold: float) -> list[dict]:
    """Recompute the lesions at ``threshold`` from the stored score: no new model run."""
    import SimpleITK as sitk

    from maediff_core.postprocess import PostprocessConfig
    from maediff_core.writeback import native_lesions

    labels, rows = native_lesions(results.score, threshold, results.record, results.heat,
                                  PostprocessConfig(min_component_voxels=results.min_voxels))
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion labels")
    try:
        slicer.util.updateVolumeFromArray(label_node, sitk.GetArrayFromImage(labels).astype(np.int16))
        label_node.CopyOrientation(results.heatmap)  # the input's own grid, as written by detect
        set_lesion_segments(results, label_node, rows)
    finally:
        discard(scene, label_node)
    results.threshold = threshold
    results.heatmap.GetDisplayNode().SetLowerThreshold(0.5 * threshold)
    return rows


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
    """World RAS centroid of a table row, for jumping the slice views to it: the table holds the
    volume's own (local) RAS, and JumpSlicesToLocation takes world RAS (through the parent transform)."""
    local = results.rows[row_index]["centroid_ras_mm"]
    parent = results.heatmap.GetParentTransformNode()
    if parent is None:
        return list(local)
    to_world = vtk.vtkGeneralTransform()
    parent.GetTransformToWorld(to_world)
    return list(to_world.TransformPoint(local))


# -- export ---------------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What an export wrote, and what it did not write and why (each file stands on its own)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def text(self) -> str:
        lines = [f"Wrote {p}" for p in self.written] + [f"Not written: {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def export_results(scene, results: Results, folder: str | Path, dicom_files: list[str] | None = None,
                   dicom_unavailable: str | None = None) -> ExportReport:
    """Label map and heatmap .nii.gz, segmentation .seg.nrrd, and DICOM SEG for DICOM inputs.

    ``dicom_unavailable``: why DICOM SEG cannot be written here (None: it can)."""
    folder = Path(folder)
    name = _safe(results.placement.name)
    report = ExportReport()
    no_lesions = f"no lesion candidates at threshold {results.threshold:.4f}"

    def attempt(file_name: str, write) -> None:
        try:
            report.written.append(write(folder / file_name))
        except Exception as error:  # one file's failure must not hide what the others wrote
            report.skipped.append((file_name, str(error) or type(error).__name__))

    attempt(f"{name}_heatmap.nii.gz", lambda path: write_node(scene, results.heatmap, path))
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} lesion labels")
    try:
        label_node.CopyOrientation(results.heatmap)
        labels = lesion_label_array(results)
        slicer.util.updateVolumeFromArray(label_node, labels)
        attempt(f"{name}_lesions.nii.gz", lambda path: write_node(scene, label_node, path))
        if results.rows:
            attempt(f"{name}_lesions.seg.nrrd", lambda path: write_node(scene, results.lesions, path))
        else:
            report.skipped.append((f"{name}_lesions.seg.nrrd", no_lesions))
        seg_name = f"{name}_lesions_seg.dcm"
        if not dicom_files:
            report.skipped.append((seg_name, "the input was not loaded from DICOM"))
        elif not results.rows:
            report.skipped.append((seg_name, no_lesions))
        elif dicom_unavailable:
            report.skipped.append((seg_name, dicom_unavailable))
        else:
            attempt(seg_name, lambda path: export_dicom_seg(labels, results.rows, dicom_files, path,
                                                            slice_origins_lps(results.heatmap)))
    finally:
        discard(scene, label_node)
    return report


def lesion_label_array(results: Results) -> np.ndarray:
    """The module's lesion segments as labels 1..n on the input grid (k, j, i); segments a user
    added are not lesions of this run and stay out."""
    labels = np.zeros(slicer.util.arrayFromVolume(results.heatmap).shape, np.uint16)
    if not results.rows:
        return labels
    ids = vtk.vtkStringArray()
    for row in results.rows:
        ids.InsertNextValue(f"{LESION_ID}{row['label']}")
    scene = results.lesions.GetScene()
    tables = color_tables(scene)
    merged = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(results.lesions, ids, merged,
                                                                             results.heatmap)
        exported = slicer.util.arrayFromVolume(merged)
        # Exported labels follow the order of ``ids``: 1 -> first row's lesion, and so on.
        for index, row in enumerate(results.rows, start=1):
            labels[exported == index] = row["label"]
    finally:
        discard(scene, merged)
        # The export adds a colour table (``<segmentation>_ColorTable``) to the scene: it goes with the label map.
        for table in color_tables(scene) - tables:
            scene.RemoveNode(scene.GetNodeByID(table))
    return labels


def discard(scene, node) -> None:
    """Remove a temporary node and the display nodes MRML made for it (RemoveNode leaves them)."""
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    scene.RemoveNode(node)
    for display in displays:
        if display is not None:
            scene.RemoveNode(display)


def color_tables(scene) -> set[str]:
    """IDs of the scene's colour table nodes."""
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def slice_origins_lps(volume_node) -> np.ndarray:
    """LPS position of the first voxel of each slice k of a volume (k, 3)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    k = np.arange(volume_node.GetImageData().GetDimensions()[2])
    ras = (m[:3, 2][None, :] * k[:, None]) + m[:3, 3][None, :]
    return ras * np.array([-1.0, -1.0, 1.0])


def export_dicom_seg(labels: np.ndarray, rows: list[dict], dicom_files: list[str], path: Path,
                     slice_origins: np.ndarray | None = None) -> Path:
    """DICOM SEG (highdicom) of the lesion labels (k, j, i) over the source series.

    ``dicom_files`` in the series' own instance order: one file per slice k of the volume, or one
    multi-frame file. ``slice_origins`` (LPS, one per slice) checks that file k holds slice k."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if not rows:
        raise ValueError("no lesion to export as DICOM SEG")
    sources = [pydicom.dcmread(f) for f in dicom_files]
    frames = int(getattr(sources[0], "NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    if labels.shape != (frames, sources[0].Rows, sources[0].Columns):
        raise ValueError(f"labels {labels.shape} do not match the DICOM series "
                         f"({frames} x {sources[0].Rows} x {sources[0].Columns})")
    if slice_origins is not None and len(sources) > 1:
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
        worst = float(np.abs(positions - slice_origins).max())
        if worst > 0.1:  # mm; DICOM positions carry a few decimals
            raise ValueError(f"the DICOM files are not in the volume's slice order (off by {worst:.2f} mm)")
    algorithm = hd.AlgorithmIdentificationSequence(name="MAEDiffAnomaly", version="0.1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"Lesion {row['label']}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, row in enumerate(rows, start=1)]
    # Segment numbers must run 1..n: map each lesion label to its row's position.
    numbered = np.zeros(labels.shape, np.uint16)
    for number, row in enumerate(rows, start=1):
        numbered[labels == row["label"]] = number
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbered, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
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
