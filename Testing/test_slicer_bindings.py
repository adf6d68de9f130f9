"""Every widget the .ui binds to a parameter (SlicerParameterName) has a parameter whose declared
type one of Slicer's GUI connectors accepts for that widget class (the table in slicer_standins,
from Slicer's guiConnectors.py). A binding no connector accepts makes connectGui raise when the
panel loads, in every Slicer release."""

from __future__ import annotations

import ast
import pathlib
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_standins import Choice, WithinRange, binding_error

from MAEDiffAnomalyLib import model_card

MODULE = Path(__file__).resolve().parent.parent / "MAEDiffAnomaly"
UI = MODULE / "Resources" / "UI" / "MAEDiffAnomaly.ui"


def declared_parameters() -> dict[str, object]:
    """The parameter node's fields and their declared types, read from the module's source."""
    tree = ast.parse((MODULE / "MAEDiffAnomaly.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MAEDiffAnomalyParameterNode")
    names = {"Annotated": typing.Annotated, "Choice": Choice, "WithinRange": WithinRange, "Path": pathlib.Path,
             "model_card": model_card, "str": str, "int": int, "float": float, "bool": bool}
    fields = {}
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign):
            source = ast.unparse(statement.annotation)
            for node in ast.walk(statement.annotation):
                if isinstance(node, ast.Name) and node.id.startswith("vtkMRML"):
                    names[node.id] = type(node.id, (), {})
            fields[statement.target.id] = eval(source, names)  # noqa: S307 - the module's own annotations
    return fields


def bindings() -> dict[str, tuple[str, str]]:
    """widget name -> (widget class, parameter name)."""
    found = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[widget.get("name")] = (widget.get("class"), prop.find("string").text)
    return found


def test_every_binding_has_a_connector():
    fields = declared_parameters()
    for widget, (widget_class, parameter) in bindings().items():
        assert parameter in fields, f"{widget} binds to {parameter}, which the parameter node lacks"
        error = binding_error(widget_class, fields[parameter])
        assert error is None, f"{widget} ({widget_class}) -> {parameter}: {error}"
    assert {"inputVolume", "modelPath", "device", "tTest", "stride", "detectThreshold", "exportFolder"} <= \
        {parameter for _, parameter in bindings().values()}


@pytest.mark.parametrize("widget_class, annotation", [
    ("ctkPathLineEdit", str),  # a path edit connects to pathlib.Path only
    ("ctkDirectoryButton", str),
    ("ctkSliderWidget", float),  # a slider needs bounds
    ("QComboBox", str),  # a combo box needs its Choice
    ("QSpinBox", float),
    ("QCheckBox", int),
])
def test_the_table_refuses_what_slicer_refuses(widget_class, annotation):
    assert binding_error(widget_class, annotation) is not None


@pytest.mark.parametrize("widget_class, annotation", [
    ("ctkPathLineEdit", pathlib.Path),
    ("ctkSliderWidget", typing.Annotated[float, WithinRange(0.0, 1.0)]),
    ("QComboBox", typing.Annotated[str, Choice(["a", "b"])]),
    ("qMRMLNodeComboBox", type("vtkMRMLScalarVolumeNode", (), {})),
])
def test_the_table_accepts_what_slicer_accepts(widget_class, annotation):
    assert binding_error(widget_class, annotation) is None
