"""The module's panel as a user drives it: Detect -> running (inputs locked, the button is Cancel)
-> finished / cancelled / failed, on the real MRML scene, with a real detection subprocess started
by Slicer's own ``launchConsoleProcess`` through a PythonSlicer launcher. Only Qt, the .ui loader
and the parameter-node binding are stand-ins (slicer_standins.py), and the binding follows Slicer's
connector rule, so a panel Slicer could not load cannot load here either.

Each test has a new scene and a new panel, as a user who starts Slicer again: none depends on
another's state. An error that a slot raises is printed and swallowed by PythonQt; here it fails
the test that caused it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
import unittest
import urllib.request
from pathlib import Path

import pytest
import SimpleITK as sitk
import slicer_standins as standins

from maediff_core.phantom import PhantomConfig, make_phantom

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MAEDiffAnomaly"


@pytest.fixture(scope="module")
def slicer_app(tmp_path_factory):
    """The module imported as Slicer imports it, PythonSlicer on the PATH."""
    temporary = tmp_path_factory.mktemp("slicer-app")
    saved_path = os.environ["PATH"]
    standins.python_slicer(tmp_path_factory.mktemp("bin"))
    slicer = standins.install(MODULE, temporary)
    from MAEDiffAnomalyLib import scene as scene_lib

    sys.modules.pop("MAEDiffAnomaly", None)
    import MAEDiffAnomaly

    yield types.SimpleNamespace(module=MAEDiffAnomaly, slicer=slicer, scene_lib=scene_lib, temporary=temporary)
    os.environ["PATH"] = saved_path
    for name in ("qt", "ctk", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "MAEDiffAnomaly"):
        sys.modules.pop(name, None)


@pytest.fixture
def app(slicer_app):
    """A fresh scene, and no error swallowed by a slot while the test runs."""
    standins.UNCAUGHT.clear()
    yield types.SimpleNamespace(**vars(slicer_app), scene=slicer_app.scene_lib.headless_scene())
    assert not standins.UNCAUGHT, f"a slot raised: {standins.UNCAUGHT!r}"


@pytest.fixture
def panel(app):
    widget = app.module.MAEDiffAnomalyWidget()
    widget.setup()
    yield widget
    widget.cleanup()


@pytest.fixture(scope="module")
def volume_files(atlas, tmp_path_factory) -> dict[str, Path]:
    """Two skull-stripped T2 volumes already in atlas space (the panel's Advanced switches skip
    registration, which other tests cover)."""
    folder = tmp_path_factory.mktemp("volumes")
    paths = {}
    for name, seed in (("patient A", 31), ("patient B", 32)):
        phantom = make_phantom("tumour", seed, PhantomConfig(skull_probability=0.0), atlas,
                               native_grid=atlas.template, pose=sitk.AffineTransform(3))
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(phantom.image, str(paths[name]))
    return paths


@pytest.fixture
def volumes(app, volume_files):
    """The two volumes in the scene; the first under a transform."""
    nodes = [app.scene_lib.read_volume_node(app.scene, path, name) for name, path in volume_files.items()]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    nodes[0].SetAndObserveTransformNodeID(transform.GetID())
    return nodes


def select_model(panel, path) -> None:
    standins.user_sets(panel.ui.modelPathLineEdit, str(path))


def test_panel_loads_with_the_bundled_model(app, panel):
    from maediff_core.modelfile import load_card
    from maediff_core.resources import default_model_path

    parameters = panel._parameterNode
    assert parameters.modelPath == default_model_path()
    assert "maediff-small (maediff)" in panel.ui.modelCardLabel.text
    assert panel.ui.syntheticWarningLabel.visible
    assert panel.ui.tTestSpinBox.specialValueText == "model's (150)"
    assert panel.ui.strideComboBox.items == ["model's (48)", "16", "48"]
    card = load_card(default_model_path())  # its threshold at the point detection uses unless told
    threshold = card.reading["threshold"] if card.operating_point == "reading" else card.threshold
    assert panel.ui.detectThresholdSpinBox.specialValueText == f"model's ({threshold:.4f})"
    assert parameters.exportFolder == Path(app.slicer.app.defaultScenePath)
    assert not panel.ui.applyButton.enabled  # no volume yet


def test_choosing_another_model_shows_that_models_card(app, panel, s48_model):
    """Slicer runs the module's slot before the connector's: the parameter still holds the old path."""
    from maediff_core.resources import default_model_path

    config = json.loads(s48_model.read_text())["config"]
    select_model(panel, s48_model)
    assert panel._parameterNode.modelPath == s48_model
    assert f"{config['name']} ({config['method']})" in panel.ui.modelCardLabel.text
    assert panel.ui.tTestSpinBox.specialValueText == f"model's ({config['diffusion']['t_test'][0]})"
    select_model(panel, default_model_path())
    assert "maediff-small (maediff)" in panel.ui.modelCardLabel.text and panel.ui.syntheticWarningLabel.visible


@pytest.fixture(scope="module")
def s48_model(tiny_model, tmp_path_factory):
    """The tiny model with a card whose operating point is stride 48 (as a pDDPM-s48 card's)."""
    card = json.loads(Path(tiny_model).read_text())
    card["config"]["patch"]["stride"] = 48
    path = tmp_path_factory.mktemp("s48") / "s48.json"
    path.write_text(json.dumps(card))
    shutil.copy(Path(tiny_model).with_suffix(".safetensors"), path.with_suffix(".safetensors"))
    return path


def test_detect_runs_with_inputs_locked_and_results_where_the_input_was(app, panel, volumes, s48_model):
    first, second = volumes
    parameters = panel._parameterNode
    parameters.inputVolume = first
    parameters.device = "cpu"
    parameters.skullStripped = parameters.skipRegistration = True
    select_model(panel, s48_model)
    assert panel.ui.strideComboBox.items[0] == "model's (48)"
    assert panel.ui.applyButton.enabled
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert not standins.UNCAUGHT and panel.run is not None
    args = panel.run.process.args
    assert not {"--t-test", "--stride", "--threshold"} & set(args)  # the card's operating point
    assert "--no-register" in args and args[args.index("--mask-method") + 1] == "skull-stripped"
    assert args[args.index("--runtime") + 1] == "torch"  # auto, where torch is installed
    assert panel.ui.applyButton.text == "Cancel" and panel.ui.applyButton.enabled
    assert not panel.ui.inputsCollapsibleButton.enabled and not panel.ui.preprocessingCollapsibleButton.enabled
    assert panel.timer.active
    parameters.inputVolume = second  # whatever the selection does now, the run belongs to the first volume
    work = panel.run.work

    seen = standins.drive(panel, lambda: panel.run is None)
    assert seen == sorted(seen) and panel.ui.progressBar.value == 100
    assert len(set(seen)) > 5  # one bar that moves through every stage
    results = panel.results
    assert results is not None and results.input is first
    assert panel.ui.statusLabel.text.endswith("in patient A (PyTorch on the CPU)")
    assert json.loads((results.result_dir / "lesions.json").read_text())["detect"]["stride"] == 48  # the card's
    assert results.heatmap.GetName() == "patient A anomaly heatmap"
    assert results.heatmap.GetAttribute(app.scene_lib.INPUT) == first.GetID()
    assert results.heatmap.GetTransformNodeID() == first.GetTransformNodeID()
    assert panel.ui.applyButton.text == "Detect anomalies" and panel.ui.inputsCollapsibleButton.enabled
    assert panel.ui.thresholdSlider.enabled and panel.ui.exportButton.enabled
    assert not work.exists() and results.result_dir.is_dir()
    assert Path(app.slicer.app.temporaryPath) / "MAEDiffAnomaly" in results.result_dir.parents
    assert (panel.ui.thresholdSlider.minimum, panel.ui.thresholdSlider.maximum) == results.threshold_range()
    assert panel.ui.thresholdSlider.value == 0.05 and results.threshold_range()[1] >= 0.1
    assert (panel.ui.thresholdSlider.singleStep, panel.ui.thresholdSlider.decimals) == results.slider_step()

    panel.ui.thresholdSlider.emit("valueChanged(double)", 0.08)
    assert not standins.UNCAUGHT and panel.ui.statusLabel.text.endswith("at threshold 0.0800")
    assert panel.results.threshold == 0.08
    assert panel.ui.inputInfoLabel.text == "Voxels 1 x 1 x 1 mm"  # the second volume: not checked yet
    parameters.inputVolume = first
    assert panel.ui.inputInfoLabel.text.startswith("Voxels 1 x 1 x 1 mm; contrast checked: CSF-WM ")


def test_cancel_returns_to_idle_and_leaves_nothing(app, panel, volumes):
    panel._parameterNode.inputVolume = volumes[1]
    nodes = app.scene.GetNumberOfNodes()
    panel.ui.applyButton.emit("clicked(bool)", False)
    work = panel.run.work
    standins.drive(panel, lambda: panel.run is None or panel.run.process.progress.stage == "preprocess", 120)
    panel.ui.applyButton.emit("clicked(bool)", False)  # the button is Cancel now
    assert panel.run is None and panel.ui.statusLabel.text == "Cancelled"
    assert panel.ui.applyButton.text == "Detect anomalies" and panel.ui.inputsCollapsibleButton.enabled
    assert app.scene.GetNumberOfNodes() == nodes and not work.exists()


def test_a_model_without_threshold_is_refused_before_running(app, panel, volumes, tiny_model, tmp_path):
    card = json.loads(Path(tiny_model).read_text())
    card["threshold"] = None
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(card))
    shutil.copy(Path(tiny_model).with_suffix(".safetensors"), bare.with_suffix(".safetensors"))
    panel._parameterNode.inputVolume = volumes[0]
    select_model(panel, bare)
    assert panel.ui.detectThresholdSpinBox.specialValueText == "none in the model: set one"
    standins.DIALOGS.clear()
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert panel.run is None and panel.ui.applyButton.text == "Detect anomalies"
    assert any("no decision threshold" in text for kind, text, _ in standins.DIALOGS if kind == "error")
    assert [text[:32] for text in standins.raised_in_slots()] == ["This model has no decision thres"]


def test_the_panel_says_which_operating_point_is_in_use_and_passes_the_users_choices(app, panel, volumes, tiny_model,
                                                                                     tmp_path):
    card = json.loads(Path(tiny_model).read_text())
    card["reading"] = {"threshold": 0.2, "min_voxels": 27, "target": "at most 1 lesion candidate(s)"}
    path = tmp_path / "reading.json"
    path.write_text(json.dumps(card))
    shutil.copy(Path(tiny_model).with_suffix(".safetensors"), path.with_suffix(".safetensors"))
    select_model(panel, path)
    assert panel.ui.operatingPointComboBox.items == ["model's (reading)", "reading", "protocol"]
    assert panel.ui.scoringComboBox.items[0] == "model's (residual)"
    assert panel.ui.operatingPointInfoLabel.text.startswith("Operating point in use: reading")
    assert panel.ui.detectThresholdSpinBox.specialValueText == "model's (0.2000)"
    parameters = panel._parameterNode
    parameters.operatingPoint = "protocol"
    assert panel.ui.operatingPointInfoLabel.text.startswith("Operating point in use: protocol")
    assert panel.ui.detectThresholdSpinBox.specialValueText == "model's (0.0500)"
    parameters.inputVolume, parameters.scoring, parameters.detectThreshold = volumes[0], "mhd:4", 0.3
    panel.ui.applyButton.emit("clicked(bool)", False)
    args = panel.run.process.args
    assert [args[args.index(flag) + 1] for flag in ("--operating-point", "--scoring", "--threshold")] == \
        ["protocol", "mhd:4", "0.3"]
    panel.ui.applyButton.emit("clicked(bool)", False)  # Cancel
    assert panel.run is None


def test_a_failed_run_shows_the_cores_message(app, panel, tmp_path):
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([40, 40, 20], sitk.sitkInt16) + 7, str(flat))
    node = app.scene_lib.read_volume_node(app.scene, flat, "flat")
    panel._parameterNode.inputVolume = node
    panel._parameterNode.tTest = 300
    standins.DIALOGS.clear()
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert panel.run.process.args[panel.run.process.args.index("--t-test") + 1] == "300"  # only what was set
    standins.drive(panel, lambda: panel.run is None, 120)
    panel._parameterNode.tTest = 0
    errors = [(text, details) for kind, text, details in standins.DIALOGS if kind == "error"]
    assert errors and errors[0][0].startswith("Anomaly detection failed: ") and "same value" in errors[0][0]
    assert panel.ui.statusLabel.text == errors[0][0].replace("Anomaly detection", "Detection")
    assert "same value" in panel.ui.logTextEdit.plainText  # the live log holds what the detector printed
    assert panel.ui.applyButton.text == "Detect anomalies" and panel.ui.inputsCollapsibleButton.enabled


def test_a_t1_volume_is_refused_with_the_reason_and_the_switch_that_runs_it_anyway(app, panel, atlas, s48_model,
                                                                                     tmp_path):
    t1 = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.Mask(atlas.template, atlas.brain_mask), str(t1))  # the atlas: a T1, in atlas space
    parameters = panel._parameterNode
    parameters.inputVolume = app.scene_lib.read_volume_node(app.scene, t1, "T1 MPRAGE")
    parameters.skullStripped = parameters.skipRegistration = True
    select_model(panel, s48_model)
    standins.DIALOGS.clear()
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert "--force" not in panel.run.process.args
    standins.drive(panel, lambda: panel.run is None, 120)
    [(_, text, _)] = [dialog for dialog in standins.DIALOGS if dialog[0] == "error"]
    assert text.startswith("Anomaly detection failed: this looks like a T1-weighted image")
    assert text.endswith("the model was trained on T2 (Advanced > 'Run even if the contrast is not T2' runs it anyway)")
    assert panel.results is None
    parameters.force = True
    parameters.skullStripped, parameters.deformableMask = False, True  # a head with its skull
    panel.ui.applyButton.emit("clicked(bool)", False)
    args = panel.run.process.args
    assert "--force" in args and args[args.index("--mask-method") + 1] == "atlas-deformable"
    panel.ui.applyButton.emit("clicked(bool)", False)  # Cancel
    parameters.skullStripped, parameters.deformableMask = True, False


def test_without_pythonslicer_there_is_no_run(app, panel, volumes, monkeypatch):
    """Inside Slicer sys.executable is the Slicer application: never a fallback for PythonSlicer."""
    monkeypatch.setenv("PATH", "/nonexistent")
    panel._parameterNode.inputVolume = volumes[0]
    standins.DIALOGS.clear()
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert panel.run is None
    assert any("PythonSlicer was not found" in text for kind, text, _ in standins.DIALOGS if kind == "error")
    assert ["PythonSlicer was not found" in text for text in standins.raised_in_slots()] == [True]


def test_the_first_detects_install_runs_in_a_child_and_its_failure_or_cancel_starts_nothing(
        app, panel, volumes, monkeypatch, tmp_path):
    """A Python that lacks ONNX Runtime, and a module whose wheels folder cannot satisfy pip: the
    install runs in a child (the click returns at once), its failure is pip's own message, and a
    cancelled install starts no detection."""
    from MAEDiffAnomalyLib import dependencies

    monkeypatch.setattr(dependencies, "missing", lambda group: ["onnxruntime"])
    monkeypatch.setattr(dependencies, "WHEELS", tmp_path)  # empty: pip --no-index finds nothing
    monkeypatch.setattr(dependencies, "GROUPS", {**dependencies.GROUPS, "onnx": {"onnxruntime": "not-a-package>=1"}})
    panel._parameterNode.inputVolume = volumes[0]
    panel._parameterNode.runtime = "onnx"
    standins.DIALOGS.clear()
    panel.ui.applyButton.emit("clicked(bool)", False)
    assert panel.install is not None and panel.run is None and panel.ui.applyButton.text == "Cancel"
    assert "from the module's wheels folder" in standins.DIALOGS[0][1] and "--no-index" in panel.install.commands[0]
    assert panel.ui.statusLabel.text == "Installing ONNX Runtime..."
    standins.drive(panel, lambda: panel.install is None, 120)
    [(_, text, details)] = [dialog for dialog in standins.DIALOGS if dialog[0] == "error"]
    assert text.startswith("Could not install ONNX Runtime") and "not-a-package" in details
    assert panel.run is None and panel.ui.applyButton.text == "Detect anomalies"
    panel.ui.applyButton.emit("clicked(bool)", False)
    panel.ui.applyButton.emit("clicked(bool)", False)  # Cancel, while pip runs
    assert panel.install is None and panel.run is None and panel.ui.statusLabel.text == "Cancelled"


def test_an_export_install_that_fails_returns_no_and_logs_pips_message(app, monkeypatch, tmp_path, caplog):
    """DICOM SEG export goes on without highdicom when pip fails: the other files are still written."""
    from MAEDiffAnomalyLib import dependencies

    monkeypatch.setattr(dependencies, "missing", lambda group: ["highdicom"])
    monkeypatch.setattr(dependencies, "WHEELS", tmp_path)
    monkeypatch.setattr(dependencies, "GROUPS", {**dependencies.GROUPS, "export": {"highdicom": "not-a-package>=1"}})
    assert app.module.MAEDiffAnomalyLogic().ensurePackages("export") is False
    assert "pip could not install the export packages" in caplog.text and "not-a-package" in caplog.text


def test_check_device_does_not_block(panel):
    panel.ui.detectDeviceButton.emit("clicked(bool)", False)
    # The click returns while the query runs: a blocking call would have left its answer here.
    assert panel.deviceQuery is not None and panel.ui.deviceInfoLabel.text.startswith("Asking")
    standins.drive(panel, lambda: panel.deviceQuery is None, 120)
    assert panel.ui.deviceInfoLabel.text.startswith(("CPU: ONNX Runtime", "GPU:"))


@pytest.fixture
def shown_results(app, panel, detection_run, tmp_path):
    """A finished detection's results in the panel: conftest's real `maediff detect` run, its
    folder copied (the panel removes result files it replaces), loaded by the module's scene code."""
    folder = shutil.copytree(detection_run["result_dir"], tmp_path / "result")
    node = app.scene_lib.read_volume_node(app.scene, detection_run["folder"] / "input.nii.gz", "input")
    results = app.scene_lib.load_results(app.scene, app.scene_lib.Placement.of(app.scene, node), folder)
    panel.setResults(results)
    return results


def test_compare_layout_gives_back_the_views_it_linked(app, panel, shown_results):
    scene = app.scene
    import slicer

    layout_node = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    views = {}
    for name in ("Red", "Yellow", "Green"):
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        views[name] = types.SimpleNamespace(mrmlSliceNode=lambda s=slice_node: s,
                                            mrmlSliceCompositeNode=lambda c=composite: c,
                                            sliceLogic=lambda: types.SimpleNamespace(FitSliceToAll=lambda: None))
    manager = types.SimpleNamespace(layout=3, sliceWidget=views.get,
                                    layoutLogic=lambda: types.SimpleNamespace(GetLayoutNode=lambda: layout_node))
    manager.setLayout = lambda layout: setattr(manager, "layout", layout)
    app.slicer.app.layoutManager = lambda: manager
    panel.ui.inspectButton.emit("toggled(bool)", True)
    assert manager.layout == app.scene_lib.COMPARE_LAYOUT_ID
    assert all(v.mrmlSliceCompositeNode().GetLinkedControl() for v in views.values())
    panel.ui.inspectButton.emit("toggled(bool)", False)
    assert manager.layout == 3
    assert not any(v.mrmlSliceCompositeNode().GetLinkedControl() for v in views.values())


def test_the_self_test_says_why_it_cannot_run_in_a_fresh_slicer(app, monkeypatch):
    """The build farm runs the module's self-test in a Slicer where nothing the module installs exists."""
    from MAEDiffAnomalyLib import dependencies

    monkeypatch.setattr(dependencies, "missing", lambda group: ["monai", "einops"])
    with pytest.raises(unittest.SkipTest, match="lacks monai, einops: click Detect anomalies once"):
        app.module.MAEDiffAnomalyTest().runTest()


def test_sample_data_loads_from_the_module_folder(app, tmp_path):
    registered = {}
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: registered.update(kw))
    sys.modules["SampleData"] = sample_data
    try:
        app.module.registerSampleData()
    finally:
        del sys.modules["SampleData"]
    assert registered["sampleName"] == "MAEDiffT2Sample" and registered["uris"].startswith("file://")
    # What the Sample Data module does with it (SampleDataLogic.downloadFile): no network.
    copy = tmp_path / registered["fileNames"]
    urllib.request.urlretrieve(registered["uris"], copy)
    import hashlib

    assert registered["checksums"] == f"SHA256:{hashlib.sha256(copy.read_bytes()).hexdigest()}"
    assert sitk.ReadImage(str(copy)).GetSize() == (227, 245, 58)


def test_closing_the_scene_during_a_run_stops_it_and_leaves_no_file(app, panel, volumes):
    panel._parameterNode.inputVolume = volumes[1]
    panel._parameterNode.device = "cpu"
    panel.ui.applyButton.emit("clicked(bool)", False)
    process, work = panel.run.process, panel.run.work
    assert process.running and work.is_dir()
    app.scene.Clear(0)  # File > Close Scene: the scene's StartCloseEvent reaches the panel
    assert panel.run is None and panel.results is None and not process.running and not work.exists()
    assert not (Path(app.slicer.app.temporaryPath) / "MAEDiffAnomaly").exists()
