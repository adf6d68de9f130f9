"""Static checks of the Slicer module that need no Slicer process: the widget names the code uses
exist in the .ui file, parameter names match the parameter node, CMake lists every file."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from MAEDiffAnomalyLib import dependencies, model_card

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "MAEDiffAnomaly"
UI = MODULE / "Resources" / "UI" / "MAEDiffAnomaly.ui"
SOURCE = (MODULE / "MAEDiffAnomaly.py").read_text()


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def parameter_fields() -> set[str]:
    tree = ast.parse(SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MAEDiffAnomalyParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used, "the widget uses no ui names?"
    missing = used - set(ui_widgets())
    assert not missing, f"not in {UI.name}: {sorted(missing)}"


def test_parameter_names_bind_to_parameter_node_fields():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    fields = parameter_fields()
    assert set(bound.values()) <= fields, set(bound.values()) - fields
    assert {"inputVolume", "modelPath", "device", "threshold", "opacity"} <= set(bound.values())


def test_cmake_lists_every_module_file():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MAEDiffAnomaly")
    for path in sorted((MODULE / "MAEDiffAnomalyLib").glob("*.py")):
        assert f"MAEDiffAnomalyLib/{path.name}" in cmake, path.name
    for resource in ("Resources/Icons/MAEDiffAnomaly.png", "Resources/UI/MAEDiffAnomaly.ui"):
        assert resource in cmake and (MODULE / resource).is_file()
    top = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({field} "[^"]+"\)', top), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert (ROOT / "Resources" / "MAEDiffAnomaly.png").is_file()


def test_never_installs_simpleitk_or_numpy():
    for forbidden in ("SimpleITK", "numpy", "torch"):
        with pytest.raises(ValueError, match="must not be installed"):
            dependencies.pip_arguments([forbidden])
    commands = dependencies.pip_arguments(["einops", "monai"])
    assert all("-c" in command for command in commands)  # numpy pinned to the installed version
    assert any("--no-deps" in command and "monai>=1.3" in command for command in commands)
    constraints = Path(commands[0][commands[0].index("-c") + 1]).read_text()
    assert constraints.startswith("numpy==")


def test_model_card_summary_and_synthetic_warning(tmp_path):
    card = {"config": {"name": "maediff-small", "method": "maediff", "diffusion": {"t_test": 500},
                       "patch": {"stride": 16}}, "threshold": 0.0734,
            "training": {"epoch": 40, "train_volumes": 80, "synthetic_data": True},
            "description": "Trained on synthetic phantoms."}
    text = model_card.summary(card)
    assert "maediff-small (maediff)" in text and "threshold 0.0734" in text and "40 epochs on 80" in text
    assert model_card.is_synthetic(card)
    assert not model_card.is_synthetic({"training": {}, "description": "IXI fold 0"})
    with pytest.raises(FileNotFoundError):
        model_card.read_card(tmp_path / "absent.json")


def test_dicom_seg_export_references_the_source_series(tmp_path):
    import numpy as np
    import pydicom
    import SimpleITK as sitk
    from conftest import write_dicom_series
    from MAEDiffAnomalyLib.scene import export_dicom_seg

    image = sitk.GetImageFromArray((np.arange(6 * 32 * 32).reshape(6, 32, 32) % 97).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 3.0))
    image.SetOrigin((-10.0, 20.0, 5.0))
    files = write_dicom_series(image, tmp_path)
    labels = np.zeros((6, 32, 32), np.uint16)
    labels[1:3, 4:10, 4:10] = 1
    labels[4, 20:24, 20:24] = 2
    rows = [{"label": 1}, {"label": 2}]
    path = export_dicom_seg(labels, rows, list(reversed(files)), tmp_path / "out" / "seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion 1", "Lesion 2"]
    source = pydicom.dcmread(files[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    # One frame per (segment, slice holding it): lesion 1 on slices 1-2, lesion 2 on slice 4.
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                       for f in seg.PerFrameFunctionalGroupsSequence)
    assert positions == [8.0, 11.0, 17.0]
    with pytest.raises(ValueError, match="do not match"):
        export_dicom_seg(labels[:3], rows, files, tmp_path / "bad.dcm")


def test_compare_layout_registers_on_a_layout_node():
    import slicer
    from MAEDiffAnomalyLib.scene import COMPARE_LAYOUT_ID, register_compare_layout

    scene = slicer.vtkMRMLScene()
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    assert register_compare_layout(layout) == COMPARE_LAYOUT_ID == register_compare_layout(layout)
    description = layout.GetLayoutDescription(COMPARE_LAYOUT_ID)
    root = ET.fromstring(description)
    assert [v.get("singletontag") for v in root.iter("view")] == ["Red", "Yellow", "Green"]
