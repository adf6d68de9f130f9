"""Stand-ins for the parts of the Slicer application that cannot exist here: Qt widgets, the .ui
loader, the parameter-node GUI binding, ScriptedLoadableModule, ``slicer.app``. Everything else is
real: the MRML scene and ``slicer.util`` of PyPI's slicer-core (``launchConsoleProcess``,
``tryWithErrorDisplay``, ``VTKObservationMixin``), the module's logic and Lib, the core.

The binding follows Slicer's own rule, from Base/Python/slicer/parameterNodeWrapper/guiConnectors.py
(5.6.2 to main): each connector's ``canRepresent`` accepts one exact widget class with certain
declared types, and ``connectGui`` raises when none accepts a binding. ``CONNECTORS`` is that
table; the stand-in ``connectGui`` and the static binding test both use it.
"""

from __future__ import annotations

import enum
import inspect
import pathlib
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass

PATHS = {pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
         pathlib.PureWindowsPath}
NODE = "MRML node"  # any vtkMRML*Node class (or a Union of them)

# widget class -> (accepted declared types, needs Choice, needs bounds): guiConnectors.py's
# QCheckBoxToBoolConnector, QCheckablePushButtonToBoolConnector, QSliderOrSpinBoxToIntConnector,
# QDoubleSpinBoxCtkSliderWidgetToFloatConnector, QComboBoxToStringableConnector /
# QComboBoxToEnumConnector, QLineEditToStrConnector, QTextEditPlainTextToStrConnector,
# ctkPathLineEditToPathConnector, ctkDirectoryButtonToPathConnector,
# qMRMLNodeComboBoxToNodeConnector, qMRMLSubjectHierarchyTreeViewToNodeConnector.
CONNECTORS = {
    "QCheckBox": ({bool}, False, False),
    "QPushButton": ({bool}, False, False),
    "QSpinBox": ({int}, False, False),
    "QSlider": ({int}, False, True),
    "QDoubleSpinBox": ({float}, False, False),
    "ctkSliderWidget": ({float}, False, True),
    "QComboBox": ({int, float, str, bool, enum.Enum}, True, False),
    "QLineEdit": ({str}, False, False),
    "QTextEdit": ({str}, False, False),
    "ctkPathLineEdit": (PATHS, False, False),
    "ctkDirectoryButton": (PATHS, False, False),
    "qMRMLNodeComboBox": ({NODE}, False, False),
    "qMRMLSubjectHierarchyTreeView": ({NODE}, False, False),
}
# widget class -> the signal its connector's ``_connect`` listens to (guiConnectors.py).
CHANGED = {"QCheckBox": "stateChanged", "QPushButton": "toggled", "QSpinBox": "valueChanged", "QSlider": "valueChanged",
           "QDoubleSpinBox": "valueChanged", "ctkSliderWidget": "valueChanged", "QComboBox": "currentIndexChanged",
           "QLineEdit": "textChanged", "QTextEdit": "textChanged", "ctkPathLineEdit": "currentPathChanged",
           "ctkDirectoryButton": "directoryChanged", "qMRMLNodeComboBox": "currentNodeChanged",
           "qMRMLSubjectHierarchyTreeView": "currentItemsChanged"}


@dataclass
class Choice:
    choices: list


@dataclass
class WithinRange:
    minimum: float
    maximum: float


def split(annotation) -> tuple[object, list]:
    """(declared type, its Annotated extras)."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def kind(base) -> object:
    if isinstance(base, type) and base.__name__.startswith("vtkMRML"):
        return NODE
    if isinstance(base, type) and issubclass(base, enum.Enum) and base is not enum.Enum:
        return enum.Enum
    return base


def binding_error(widget_class: str, annotation) -> str | None:
    """Why Slicer's connectGui would refuse to bind this widget class to this declared type."""
    if widget_class not in CONNECTORS:
        return f"no connector for widget class {widget_class}"
    accepted, needs_choice, needs_bounds = CONNECTORS[widget_class]
    base, extras = split(annotation)
    if kind(base) not in accepted:
        return f"{widget_class} binds to {sorted(map(str, accepted))}, not {base}"
    if needs_choice and kind(base) is not enum.Enum and not any(isinstance(e, Choice) for e in extras):
        return f"{widget_class} needs a Choice annotation"
    if needs_bounds and not any(isinstance(e, WithinRange) for e in extras):
        return f"{widget_class} needs WithinRange bounds"
    return None


# -- Qt --------------------------------------------------------------------------------------------

class Widget:
    """Any Qt widget: properties as attributes, signals by their signature."""

    def __init__(self, cls: str = "QWidget", name: str = "", **properties):
        self.className, self.objectName = cls, name
        self.enabled, self.visible, self.text, self.toolTip = True, True, "", ""
        self.value, self.minimum, self.maximum, self.singleStep = 0, 0, 99, 1
        self.checked, self.collapsed, self.tracking, self.specialValueText = False, False, True, ""
        self.currentPath, self.directory, self.currentIndex, self.items = "", "", 0, []
        self.plainText, self.tableNode, self.node = "", None, None
        self.__dict__.update(properties)
        self.handlers: dict[str, list] = {}
        self.blocked = False

    def connect(self, signal: str, slot) -> None:
        self.handlers.setdefault(signal.split("(")[0], []).append(slot)

    def disconnect(self, signal: str, slot) -> None:
        self.handlers[signal.split("(")[0]].remove(slot)

    def emit(self, signal: str, *args) -> None:
        """What a user's action does: the slots run; an exception in a slot is printed and the
        application goes on, as PythonQt does."""
        if self.blocked:
            return
        for slot in self.handlers.get(signal.split("(")[0], []):
            try:
                slot(*args[:accepted(slot, len(args))])  # PythonQt drops what a slot does not take
            except Exception as error:  # noqa: BLE001 - PythonQt's behaviour
                UNCAUGHT.append(error)

    def blockSignals(self, block: bool) -> bool:
        was, self.blocked = self.blocked, block
        return was

    # the few methods the module calls
    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def setMRMLTableNode(self, node) -> None:
        self.tableNode = node

    def setItemText(self, index: int, text: str) -> None:
        self.items[index] = text

    def addItem(self, text: str) -> None:
        self.items.append(text)

    def clear(self) -> None:
        self.items, self.plainText = [], ""

    def appendPlainText(self, line: str) -> None:
        self.plainText += line + "\n"

    def currentNode(self):
        return self.node

    def setCurrentNode(self, node) -> None:
        self.node = node


UNCAUGHT: list[Exception] = []


def raised_in_slots() -> list[str]:
    """The messages of the errors slots raised since the last call; taken, so that a test that
    expects one (Slicer's tryWithErrorDisplay shows a dialog, then raises on) can say so."""
    messages = [str(error) for error in UNCAUGHT]
    UNCAUGHT.clear()
    return messages


def accepted(slot, offered: int) -> int:
    parameters = inspect.signature(slot).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return offered
    return min(offered, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


class QTimer:
    def __init__(self):
        self.active, self.interval, self.handlers = False, 0, []

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def connect(self, signal: str, slot) -> None:
        self.handlers.append(slot)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        for slot in self.handlers:
            slot()


def load_ui(path) -> Widget:
    """The .ui file's top widget; ``children`` maps every widget's name to it."""
    root = ET.parse(path).getroot()
    widgets = {}
    for element in root.iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            child = prop[0]
            value = child.text
            if child.tag == "bool":
                value = value == "true"
            elif child.tag in ("number", "double"):
                value = float(value)
            properties[prop.get("name")] = value
        widget = Widget(element.get("class"), element.get("name"), **properties)
        widget.items = [i.find("property/string").text for i in element.findall("item")]
        widgets[widget.objectName] = widget
    top = widgets[root.find("widget").get("name")]
    top.children = widgets
    return top


# -- parameter node --------------------------------------------------------------------------------

def parameterNodeWrapper(cls):
    """Typed parameters stored in a scripted-module node, bound to widgets by SlicerParameterName
    under Slicer's connector rule (``binding_error``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, None) for name in hints}

    class Wrapped:
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            # The values live with the node, as in Slicer (VTK keeps a wrapped object's attributes).
            object.__setattr__(self, "_values", node.__dict__.setdefault("parameter_values", dict(defaults)))

        def __getattr__(self, name):
            if name in hints:
                return self._values.get(name)
            return getattr(self.parameterNode, name)  # AddObserver & co., as Slicer's wrapper

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name}")
            value = as_declared(hints[name], value)
            self._values[name] = value
            self.parameterNode.SetParameter(name, str(value))  # fires ModifiedEvent, as Slicer's does
            for widget, bound, _ in getattr(self, "_bound", []):
                if bound == name:
                    write(widget, value)

        def connectGui(self, ui):
            bound = [connect(self, widget, bind(widget, hints, self._values)) for widget in vars(ui).values()
                     if getattr(widget, "SlicerParameterName", None) is not None]
            object.__setattr__(self, "_bound", bound)
            return bound

        def disconnectGui(self, tag):
            object.__setattr__(self, "_bound", disconnect(self._bound))

    Wrapped.__name__ = cls.__name__
    return Wrapped


def connect(parameters, widget: Widget, name: str) -> tuple:
    """A connector's ``onChanged``: the widget's signal writes the parameter from now on, after the
    slots the module connected in setup(), which therefore run first (PythonQt calls a signal's slots
    in the order they were connected)."""
    def changed(*args):
        setattr(parameters, name, read(widget))

    widget.connect(CHANGED[widget.className], changed)
    return widget, name, changed


def disconnect(bound: list[tuple]) -> list:
    """The connectors stop listening (``onChanged(None)``); returns what is left bound: nothing."""
    for widget, _, changed in bound:
        widget.disconnect(CHANGED[widget.className], changed)
    return []


def as_declared(annotation, value):
    """A path parameter holds a Path, whatever the widget gave it, as Slicer's wrapper converts."""
    return pathlib.Path(value) if kind(split(annotation)[0]) in PATHS and value is not None else value


def bind(widget: Widget, hints: dict, values: dict) -> str:
    """Slicer's connectGui for one widget: refused unless a connector accepts its class and the
    parameter's declared type; the widget then shows the parameter's choices, range and value.
    Returns the parameter's name."""
    name = widget.SlicerParameterName
    if name not in hints:
        raise RuntimeError(f"no parameter {name} for widget {widget.objectName}")
    error = binding_error(widget.className, hints[name])
    if error:
        raise RuntimeError(f"Unable to create GUI connector from datatype '{hints[name]}' to "
                           f"widget '{widget.objectName}': {error}")
    for extra in split(hints[name])[1]:
        if isinstance(extra, Choice):
            widget.choices, widget.items = list(extra.choices), [str(c) for c in extra.choices]
        if isinstance(extra, WithinRange):
            widget.minimum, widget.maximum = extra.minimum, extra.maximum
    write(widget, values.get(name))
    return name


ATTRIBUTES = {"QCheckBox": "checked", "QPushButton": "checked", "ctkPathLineEdit": "currentPath",
              "ctkDirectoryButton": "directory", "qMRMLNodeComboBox": "node", "QComboBox": "currentIndex"}


def write(widget: Widget, value) -> None:
    """A connector's ``write``: the widget shows the parameter's value. Qt emits the widget's signal
    only when its value changes, and the slots run then: in the order they were connected."""
    attribute = ATTRIBUTES.get(widget.className, "value")
    if widget.className == "QComboBox":  # by the Choice's values: the module relabels some items
        value = widget.choices.index(value) if value in widget.choices else 0
    elif attribute in ("currentPath", "directory"):
        value = str(value) if value else ""
    if getattr(widget, attribute) == value:
        return
    setattr(widget, attribute, value)
    signal = CHANGED[widget.className]
    widget.emit(signal, int(value) * 2 if signal == "stateChanged" else value)  # Qt::Checked is 2


def read(widget: Widget):
    """A connector's ``read``: the widget's value as the parameter takes it."""
    value = getattr(widget, ATTRIBUTES.get(widget.className, "value"))
    return widget.choices[value] if widget.className == "QComboBox" else value


def user_sets(widget: Widget, value) -> None:
    """What a user's edit does: the widget takes the value and emits its signal. The parameter node
    learns it only from its connector's slot, after the module's own slots have run."""
    write(widget, value)


# -- the modules Slicer provides -------------------------------------------------------------------

class App:
    """``slicer.app``: a version, a temporary folder, the startup environment, cursor calls."""

    def __init__(self, temporary: pathlib.Path, environment: dict, version=(5, 12)):
        self.temporaryPath, self.defaultScenePath = str(temporary), str(temporary / "scenes")
        self.majorVersion, self.minorVersion = version
        self._environment = environment

    def startupEnvironment(self):
        environment = self._environment
        return types.SimpleNamespace(keys=lambda: list(environment), value=lambda key: environment[key])

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def processEvents(self) -> None:  # no event loop here: nothing waits to be served
        pass

    def testingEnabled(self) -> bool:
        return False

    def connect(self, signal, slot) -> None:
        pass


class ScriptedLoadableModuleLogic:
    """Slicer's base: one parameter node per module, in the scene."""

    moduleName = "MAEDiffAnomaly"

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SetSingletonTag(self.moduleName)
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self):
        pass

    def resourcePath(self, relative: str) -> str:
        return str(MODULE_DIR / "Resources" / relative)


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Slicer's base of a module's self-test: a unittest case whose messages go to the screen."""

    def delayDisplay(self, message: str, msec: int = 1000) -> None:
        DIALOGS.append(("delay", message, ""))


MODULE_DIR = pathlib.Path()
DIALOGS: list[tuple[str, str, str]] = []  # (kind, text, details) of every message box shown
NOT_IN_STARTUP = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")  # not carried to a Slicer session's children


def python_slicer(folder: pathlib.Path) -> str:
    """A launcher named PythonSlicer in ``folder``, put first on PATH. Like Slicer's, it starts the
    real Python as its child and waits for it, so a caller holds the launcher, not the detector."""
    import os
    import stat

    launcher = folder / "PythonSlicer"
    launcher.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    return str(launcher)


def drive(panel, until, timeout_s: float = 1200.0) -> list[int]:
    """The panel's timer ticks until ``until()``; returns the progress bar values seen."""
    import time

    seen = []
    deadline = time.time() + timeout_s
    while not until() and time.time() < deadline:
        panel.timer.fire()
        seen.append(panel.ui.progressBar.value)
        time.sleep(0.1)
    assert until(), "timed out"
    return seen


def install(module_dir: pathlib.Path, temporary: pathlib.Path, confirm: bool = True,
            version: tuple[int, int] = (5, 12)):
    """Put the stand-ins where the module imports them; returns ``slicer``. The startup
    environment is this process's, less what Slicer's children do not inherit."""
    import os

    environment = {k: v for k, v in os.environ.items() if k not in NOT_IN_STARTUP}
    import slicer
    import slicer.util

    global MODULE_DIR
    MODULE_DIR = module_dir
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    sys.modules["qt"] = qt
    sys.modules["ctk"] = types.ModuleType("ctk")
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
    sys.modules["slicer.parameterNodeWrapper"] = wrapper
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {
        "__init__": lambda self, parent: setattr(self, "parent", parent)})
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    slicer.app = App(temporary, environment, version)
    # What slicer.util.WaitCursor calls: the application's override cursor.
    qt.QApplication = types.SimpleNamespace(setOverrideCursor=slicer.app.setOverrideCursor,
                                            restoreOverrideCursor=slicer.app.restoreOverrideCursor)
    slicer.util.loadUI = lambda path: load_ui(path)
    slicer.util.childWidgetVariables = lambda top: types.SimpleNamespace(**top.children)
    slicer.util.errorDisplay = lambda text, detailedText="", **kw: DIALOGS.append(("error", text, detailedText))
    slicer.util.infoDisplay = lambda text, detailedText="", **kw: DIALOGS.append(("info", text, detailedText))
    slicer.util.confirmOkCancelDisplay = lambda text, **kw: DIALOGS.append(("confirm", text, "")) or confirm
    return slicer
