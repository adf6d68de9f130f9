"""MAEDiff Anomaly: unsupervised anomaly detection in brain T2 MRI, one click from a loaded volume.

The widget is thin: it keeps its inputs in a parameter node and hands the work to the logic, which
calls MAEDiffAnomalyLib (scene building, the detection subprocess) and, through it, the core's
``maediff detect`` command line. The core is vendored beside this file (``maediff_core/``).
"""

import hashlib
import importlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from maediff_core.resources import SAMPLE_NAME, default_model_path, sample_paths
from MAEDiffAnomalyLib import dependencies, model_card, scene
from MAEDiffAnomalyLib.runner import (
    CoreProcess,
    DetectionProcess,
    DetectRequest,
    InstallProcess,
    core_command,
    device_summary,
    input_summary,
    ran_on,
    refusal,
)

MINIMUM_SLICER = (5, 10)  # Python 3.12 and SimpleITK 2.5; see the README's "Supported releases"


class MAEDiffAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MAEDiff Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MAEDiffAnomaly developers"]
        self.parent.helpText = (
            "Unsupervised anomaly detection in brain T2 MRI with a masked-autoencoder-enhanced patch "
            "diffusion model (MAEDiff). Select a T2 volume and click <b>Detect anomalies</b>: you get an "
            "anomaly heatmap, a reconstructed healthy volume and lesion candidates on the input's own grid."
            " Try it on <i>Sample Data > MAEDiff Anomaly > MAEDiffT2Sample</i>. Needs 3D Slicer 5.10 or newer;"
            " the first Detect installs ONNX Runtime (17 to 28 MB). For a GPU, install the PyTorch extension."
            " Research software, not for clinical use.")
        self.parent.acknowledgementText = (
            "Method: Xiong et al., MAEDiff (2024), built on patched DDPMs (Behrendt et al., MIDL 2023). "
            "Bundled atlas: MNI ICBM152 2009a (McConnell Brain Imaging Centre).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The bundled sample T2 volume in the Sample Data module, loaded from the module's own folder
    (a file URI: no network)."""
    import SampleData

    volume, _ = sample_paths()
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MAEDiff Anomaly", sampleName=SAMPLE_NAME, uris=volume.as_uri(), fileNames=volume.name,
        nodeNames=SAMPLE_NAME,
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "MAEDiffAnomaly.png"),
        loadFileType="VolumeFile", checksums=f"SHA256:{hashlib.sha256(volume.read_bytes()).hexdigest()}")


def unset(path) -> bool:
    """An empty path parameter (Slicer's default Path is ".")."""
    return path is None or str(path) in ("", ".")


def mask_method(maskPath, skullStripped: bool, deformableMask: bool) -> str | None:
    """The detector's --mask-method for the panel's choices (None: the detector's default)."""
    if maskPath:
        return "file"
    if skullStripped:
        return "skull-stripped"
    return "atlas-deformable" if deformableMask else None


@parameterNodeWrapper
class MAEDiffAnomalyParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    brainMask: vtkMRMLLabelMapVolumeNode
    modelPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    # auto: PyTorch when the PyTorch extension installed it (or for a GPU), else ONNX Runtime.
    runtime: Annotated[str, Choice(["auto", "onnx", "torch"])] = "auto"
    skullStripped: bool = False
    deformableMask: bool = False  # the atlas mask warped onto the head: for heads with their skull
    skipRegistration: bool = False
    force: bool = False  # run on a contrast other than T2
    # 0 and "model's": the model card's operating point (what its threshold was chosen for).
    tTest: Annotated[int, WithinRange(0, 1000)] = 0
    stride: Annotated[str, Choice([model_card.MODEL_DEFAULT, "16", "48"])] = model_card.MODEL_DEFAULT
    detectThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    operatingPoint: Annotated[str, Choice([model_card.MODEL_DEFAULT, "reading", "protocol"])] = model_card.MODEL_DEFAULT
    scoring: Annotated[str, Choice([model_card.MODEL_DEFAULT, *model_card.SCORINGS])] = model_card.MODEL_DEFAULT
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    show3D: bool = False
    exportFolder: Path


class MAEDiffAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.card = None  # the selected model's card (dict), None if unusable
        self.run = None  # the detection under way
        self.install = None  # the package install a detection waits for
        self.runtime = None  # what the detection under way (or waiting for its install) runs on
        self.deviceQuery = None  # `maediff device` under way
        self.results = None
        self.savedLayout = None  # the layout to go back to from the compare layout
        self.timer = qt.QTimer()
        self.timer.setInterval(250)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MAEDiffAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MAEDiffAnomalyLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.lesionTableView.connect("clicked(QModelIndex)", self.onLesionClicked)
        self.ui.inspectButton.connect("toggled(bool)", self.onInspect)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3D)
        self.ui.detectDeviceButton.connect("clicked(bool)", self.onCheckDevice)
        # Relabelling takes a fraction of a second: only when the user lets go of the slider.
        self.ui.thresholdSlider.tracking = False
        self.initializeParameterNode()
        if self.logic.slicerVersion() < MINIMUM_SLICER:
            self.ui.statusLabel.text = (f"This module needs 3D Slicer {'.'.join(map(str, MINIMUM_SLICER))} or newer "
                                        "(Python 3.12, SimpleITK 2.5).")

    def cleanup(self):
        self.cancel()
        self.timer.stop()
        self.logic.restoreLayout(self.savedLayout)
        self.logic.removeAllResultFiles()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.cancel()
        self.setResults(None)
        self.logic.removeAllResultFiles()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        parameters = self._parameterNode
        if not parameters.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.GetAttribute(scene.ROLE):
                parameters.inputVolume = first
        if unset(parameters.modelPath):
            parameters.modelPath = default_model_path()
        if unset(parameters.exportFolder):
            parameters.exportFolder = self.logic.defaultExportFolder(parameters.inputVolume)
        self.onModelChanged()

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self.updateGUI()

    def updateGUI(self, caller=None, event=None):
        running = self.run is not None or self.install is not None
        parameters = self._parameterNode
        self.ui.applyButton.text = "Cancel" if running else "Detect anomalies"
        self.ui.applyButton.enabled = running or bool(
            parameters and parameters.inputVolume and self.card is not None
            and self.logic.slicerVersion() >= MINIMUM_SLICER)
        # The run's input, model and settings are fixed while it runs.
        for widget in (self.ui.inputsCollapsibleButton, self.ui.preprocessingCollapsibleButton):
            widget.enabled = not running
        for widget in (self.ui.thresholdSlider, self.ui.opacitySlider, self.ui.inspectButton,
                       self.ui.exportButton, self.ui.show3DCheckBox, self.ui.lesionTableView):
            widget.enabled = self.results is not None and not running
        volume = parameters.inputVolume if parameters else None
        checked = self.results.record.get("input_check") if self.results and self.results.input is volume else None
        self.ui.inputInfoLabel.text = input_summary(volume.GetSpacing(), checked) if volume else ""
        if parameters and self.card is not None:
            point = model_card.point_in_use(self.card, parameters.operatingPoint)
            self.ui.operatingPointInfoLabel.text = model_card.POINT_MEANINGS[point]
            self.ui.detectThresholdSpinBox.specialValueText = model_card.threshold_text(self.card, point)

    # -- model and device ------------------------------------------------------------------
    def onModelChanged(self, path=None):
        # From the line edit, the path is the signal's: this slot, connected in setup(), runs before the
        # parameter node's connector has stored it (PythonQt calls slots in connection order).
        try:
            self.card = model_card.read_card(Path(path) if path is not None else self._parameterNode.modelPath)
        except (OSError, ValueError) as error:
            self.card = None
            self.ui.modelCardLabel.text = f"No usable model: {error}"
            self.ui.syntheticWarningLabel.visible = False
            self.updateGUI()
            return
        point = model_card.operating_point(self.card)
        self.ui.modelCardLabel.text = model_card.summary(self.card)
        self.ui.syntheticWarningLabel.visible = model_card.is_synthetic(self.card)
        self.ui.tTestSpinBox.specialValueText = f"model's ({point['t_test']})"
        self.ui.strideComboBox.setItemText(0, f"model's ({point['stride']})")
        self.ui.strideComboBox.enabled = not point["whole_slice"]
        self.ui.operatingPointComboBox.setItemText(0, f"model's ({point['point']})")
        self.ui.scoringComboBox.setItemText(0, f"model's ({point['scoring']})")
        self.updateGUI()

    def onCheckDevice(self):
        if self.deviceQuery is not None:
            return
        with slicer.util.tryWithErrorDisplay("Could not query the compute device.", waitCursor=True):
            self.deviceQuery = self.logic.startDeviceQuery()
            self.ui.deviceInfoLabel.text = "Asking which runtimes and devices this Slicer has..."
            self.timer.start()

    # -- running ---------------------------------------------------------------------------
    def onApplyButton(self):
        if self.run is not None or self.install is not None:
            self.cancel()
            return
        try:
            with slicer.util.tryWithErrorDisplay("Could not start the detection.", waitCursor=True):
                self.runtime = self.logic.runtimeFor(self._parameterNode)
                if self.runtime == "torch" and not self.logic.ensureTorch(self._parameterNode.device):
                    return
                self.ui.progressBar.value = 0
                self.ui.logTextEdit.clear()
                if dependencies.missing(self.runtime):
                    # Installed in a child process, polled: the panel stays live and shows pip's progress.
                    self.install = self.logic.startInstall(self.runtime)
                    if self.install is not None:
                        self.ui.statusLabel.text = f"Installing {self.runtimeName()}..."
                        self.timer.start()
                    return
                self.startRun()
        finally:
            self.updateGUI()

    def runtimeName(self) -> str:
        return "ONNX Runtime" if self.runtime == "onnx" else "PyTorch's detection packages (MONAI, einops, safetensors)"

    def startRun(self):
        self.run = self.logic.startDetection(self._parameterNode, self.card, self.runtime)
        self.ui.statusLabel.text = self.run.process.progress.text
        self.timer.start()

    def onPoll(self):
        if self.deviceQuery is not None and not self.deviceQuery.running:
            query, self.deviceQuery = self.deviceQuery, None
            query.wait()
            self.ui.deviceInfoLabel.text = (device_summary(query.output) if query.process.returncode == 0
                                            else "Could not query the device: " + query.error_text())
        if self.install is not None:
            for line in self.install.poll():
                self.ui.logTextEdit.appendPlainText(line)
                self.ui.statusLabel.text = f"Installing {self.runtimeName()}: {line.strip()[:100]}"
            if not self.install.running:
                self.finishInstall()
        if self.run is not None:
            for line in self.run.process.poll():
                self.ui.logTextEdit.appendPlainText(line)
            progress = self.run.process.progress
            self.ui.progressBar.value = round(100 * progress.fraction)
            self.ui.statusLabel.text = progress.text
            if not self.run.process.running:
                self.finishRun()
        if self.run is None and self.install is None and self.deviceQuery is None:
            self.timer.stop()

    def finishInstall(self):
        """The install ended: detection starts if it went well."""
        install, self.install = self.install, None
        try:
            if install.error == "cancelled":
                self.ui.statusLabel.text = "Cancelled"
                return
            importlib.invalidate_caches()  # the new packages, for dependencies.missing
            lacking = dependencies.missing(self.runtime)
            if install.error or lacking:
                reason = install.error or f"{', '.join(lacking)} still missing after the install"
                self.ui.statusLabel.text = f"Could not install {self.runtimeName()}"
                self.ui.logCollapsibleButton.collapsed = False
                slicer.util.errorDisplay(f"Could not install {self.runtimeName()}; pip's message is in the details "
                                         "and everything it printed under Log.", detailedText=reason)
                return
            with slicer.util.tryWithErrorDisplay("Could not start the detection.", waitCursor=True):
                self.startRun()
        finally:
            self.updateGUI()

    def finishRun(self):
        run, self.run = self.run, None
        try:
            shown = len(run.process.log)
            ok, error = run.process.finished()  # takes the last lines too
            for line in run.process.log[shown:]:
                self.ui.logTextEdit.appendPlainText(line)
            if ok:
                with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                    # The panel may be closed (no parameter node bound) when a run ends.
                    self.setResults(self.logic.finishDetection(run, self.logic.getParameterNode().opacity))
                    self.ui.progressBar.value = 100
                    self.ui.statusLabel.text = (f"{len(self.results.rows)} lesion candidate(s) in {run.placement.name}"
                                                f" ({ran_on(self.results.summary)})")
                    warnings = self.results.record.get("warnings", [])
                    if warnings:  # "not a head" and similar: the reason is in the log
                        self.ui.statusLabel.text += f". Warning: {warnings[0]}"
                        self.ui.logCollapsibleButton.collapsed = False
            elif error == "cancelled":
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = "Cancelled"
            else:
                self.ui.statusLabel.text = f"Detection failed: {refusal(error)}"
                self.ui.logCollapsibleButton.collapsed = False
                slicer.util.errorDisplay(f"Anomaly detection failed: {refusal(error)}", detailedText=error)
        finally:
            self.logic.removeWorkFolder(run)
            self.updateGUI()

    def cancel(self):
        if self.install is not None:
            self.install.cancel()
            self.finishInstall()
        if self.run is not None:
            self.run.process.cancel()
            self.finishRun()

    # -- results ---------------------------------------------------------------------------
    def setResults(self, results):
        if self.results is not None and (results is None or results.input is self.results.input):
            self.logic.removeResultFiles(self.results)  # its nodes were replaced or the scene closed
        self.results = results
        if results is not None:
            self.ui.lesionTableView.setMRMLTableNode(results.table)
            low, high = results.threshold_range()
            step, decimals = results.slider_step()
            slider = self.ui.thresholdSlider
            wasBlocked = slider.blockSignals(True)
            slider.decimals = decimals  # first: the slider rounds its range and value to them
            slider.minimum, slider.maximum = low, high
            slider.singleStep = step
            slider.value = results.threshold
            slider.blockSignals(wasBlocked)
        self.updateGUI()

    def onThresholdChanged(self, value):
        if self.results is not None and self.run is None:
            with slicer.util.tryWithErrorDisplay("Could not update the lesions.", waitCursor=True):
                rows = scene.update_threshold(slicer.mrmlScene, self.results, value)
                self.ui.statusLabel.text = f"{len(rows)} lesion candidate(s) at threshold {value:.4f}"

    def onOpacityChanged(self, value):
        if self.results is not None:
            scene.show_overlay(slicer.mrmlScene, self.results, value)

    def onLesionClicked(self, index):
        if self.results is not None and index.row() < len(self.results.rows):
            slicer.modules.markups.logic().JumpSlicesToLocation(*scene.lesion_position(self.results, index.row()), True)

    def onInspect(self, show):
        if show and self.results is not None:
            self.savedLayout = self.logic.showCompareLayout(self.results)
        elif not show:
            self.logic.restoreLayout(self.savedLayout)
            self.savedLayout = None

    def onShow3D(self, show):
        if self.results is None:
            return
        if show:
            self.results.lesions.CreateClosedSurfaceRepresentation()
        self.results.lesions.GetDisplayNode().SetVisibility3D(show)

    def onExport(self):
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            dicomFiles = self.logic.dicomFiles(self.results.input)
            unavailable = dependencies.dicom_seg_unavailable() if dicomFiles else None
            if dicomFiles and not unavailable and not self.logic.ensurePackages("export"):
                unavailable = "highdicom, the DICOM SEG writer, was not installed"
            report = scene.export_results(slicer.mrmlScene, self.results, self._parameterNode.exportFolder,
                                          dicomFiles, unavailable)
            self.ui.statusLabel.text = report.text()
            if report.skipped:
                slicer.util.infoDisplay("Export finished; some files were not written.", detailedText=report.text())


@dataclass
class Run:
    """A detection under way: its process, where its input sat when it started, its work folder."""

    process: DetectionProcess
    placement: scene.Placement
    work: Path


class MAEDiffAnomalyLogic(ScriptedLoadableModuleLogic):
    """Module logic: what Slicer holds (scene, settings, its Python) handed to MAEDiffAnomalyLib."""

    def getParameterNode(self):
        return MAEDiffAnomalyParameterNode(super().getParameterNode())

    @staticmethod
    def slicerVersion():
        return slicer.app.majorVersion, slicer.app.minorVersion

    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer: Slicer's Python without the GUI. Never ``sys.executable``: inside Slicer
        that is the Slicer application itself."""
        python = shutil.which("PythonSlicer")
        if python is None:
            raise RuntimeError("PythonSlicer was not found on Slicer's PATH; reinstall 3D Slicer.")
        return python

    @staticmethod
    def launch(args, environment):
        """Slicer's startup environment (not the running application's), no console window on Windows."""
        return slicer.util.launchConsoleProcess(args, updateEnvironment=environment)

    @staticmethod
    def ensureTorch(device: str) -> bool:
        """torch from the PyTorch extension: the CPU build if the user chose the CPU, else the one
        that fits the GPU driver. Asks first."""
        if dependencies.torch_available():
            return True
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay("This module needs PyTorch: install the 'PyTorch' extension from the "
                                     "Extensions Manager, restart Slicer, and click again.")
            return False
        backend = "cpu" if device == "cpu" else None
        if not slicer.util.confirmOkCancelDisplay(
                "PyTorch is not installed. Install it now? A GPU build is several GB; choose Device 'cpu' "
                "first for the smaller CPU build."):
            return False
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, forceComputationBackend=backend,
            torchVersionRequirement=dependencies.TORCH_REQUIREMENT)
        if torch is None:
            slicer.util.errorDisplay("PyTorch could not be installed; see the Python console.")
            return False
        return True

    @staticmethod
    def runtimeFor(parameters) -> str:
        """The runtime the panel's choice gives ("onnx" or "torch"); the detector refuses a model that
        cannot run on it, with the reason."""
        return dependencies.runtime_for(parameters.runtime, parameters.device)

    def startInstall(self, group: str) -> InstallProcess | None:
        """The pip packages of ``group`` ('onnx', 'torch' or 'export'), after asking, in a child process;
        None if the user declined. Slicer's own packages stay as they are."""
        missing = dependencies.missing(group)
        purpose = {"onnx": "Detection on ONNX Runtime", "torch": "Detection on PyTorch",
                   "export": "DICOM SEG export"}[group]
        source = (f"from the module's wheels folder ({dependencies.WHEELS}), with no network"
                  if dependencies.WHEELS.is_dir() else "from the Python Package Index")
        if not slicer.util.confirmOkCancelDisplay(
                f"{purpose} needs these Python packages: {', '.join(missing)}. Install them now, {source}?"):
            return None
        return InstallProcess(self.pythonExecutable(), dependencies.pip_arguments(group, missing), self.launch)

    def ensurePackages(self, group: str) -> bool:
        """The packages of ``group`` installed, after asking, waiting for pip: for the few seconds of a
        small install (highdicom) started from a button that needs it at once. False if the user
        declined or pip failed (its message goes to the log): the caller goes on without them."""
        if not dependencies.missing(group):
            return True
        install = self.startInstall(group)
        if install is None:
            return False
        with slicer.util.WaitCursor():
            while install.running:
                install.poll()
                slicer.app.processEvents()
                time.sleep(0.05)
        importlib.invalidate_caches()
        if install.error:
            logging.warning(f"pip could not install the {group} packages: {install.error}")
        return not dependencies.missing(group)

    def startDetection(self, parameters, card, runtime: str = "auto") -> Run:
        inputVolume = parameters.inputVolume
        if inputVolume is None:
            raise ValueError("Select a T2 volume first.")
        if card is None:
            raise ValueError("Select a usable model first.")
        override = model_card.overrides(parameters.tTest, parameters.stride, parameters.detectThreshold,
                                        parameters.operatingPoint, parameters.scoring)
        if override["threshold"] is None and model_card.operating_point(card)["threshold"] is None:
            raise ValueError("This model has no decision threshold: set one under Advanced > Detection threshold, "
                             "or choose a model evaluated with `maediff evaluate --save-threshold`.")
        placement = scene.Placement.of(slicer.mrmlScene, inputVolume)
        work = Path(tempfile.mkdtemp(prefix="MAEDiffAnomaly-"))
        try:
            inputPath = scene.write_node(slicer.mrmlScene, inputVolume, work / "input.nrrd")
            maskPath = None
            if parameters.brainMask is not None:
                maskPath = scene.write_node(slicer.mrmlScene, parameters.brainMask, work / "mask.nrrd")
            request = DetectRequest(
                input_path=inputPath, output_dir=work / "output", model_path=Path(parameters.modelPath),
                device=parameters.device, runtime=runtime, mask_path=maskPath,
                mask_method=mask_method(maskPath, parameters.skullStripped, parameters.deformableMask),
                no_register=parameters.skipRegistration, force=parameters.force, **override)
            process = DetectionProcess(request, self.pythonExecutable(), self.launch)
        except Exception:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return Run(process, placement, work)

    def finishDetection(self, run: Run, opacity: float):
        kept = Path(tempfile.mkdtemp(prefix="run-", dir=self.resultsRoot()))
        shutil.copytree(run.process.result_dir, kept, dirs_exist_ok=True)  # the slider and export read it later
        try:
            results = scene.load_results(slicer.mrmlScene, run.placement, kept)
        except Exception:
            shutil.rmtree(kept, ignore_errors=True)
            raise
        scene.show_overlay(slicer.mrmlScene, results, opacity)
        return results

    def startDeviceQuery(self) -> CoreProcess:
        return CoreProcess(core_command(self.pythonExecutable(), "device"), self.launch)

    @staticmethod
    def removeWorkFolder(run: Run):
        shutil.rmtree(run.work, ignore_errors=True)

    @staticmethod
    def resultsRoot() -> Path:
        root = Path(slicer.app.temporaryPath) / "MAEDiffAnomaly"
        root.mkdir(parents=True, exist_ok=True)
        return root

    @staticmethod
    def removeResultFiles(results):
        shutil.rmtree(results.result_dir, ignore_errors=True)

    def removeAllResultFiles(self):
        shutil.rmtree(self.resultsRoot(), ignore_errors=True)

    @staticmethod
    def defaultExportFolder(volumeNode) -> Path:
        """Beside the input's file if it has one, else Slicer's default save folder."""
        storage = volumeNode.GetStorageNode() if volumeNode is not None else None
        if storage is not None and storage.GetFileName():
            return Path(storage.GetFileName()).parent
        return Path(slicer.app.defaultScenePath)

    @staticmethod
    def dicomFiles(volumeNode):
        """Source DICOM files of a volume loaded from the DICOM database, in the series' own
        instance order (one per slice, as Slicer loaded them), else None."""
        uids = volumeNode.GetAttribute("DICOM.instanceUIDs")
        if not uids or getattr(slicer, "dicomDatabase", None) is None:
            return None
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids.split()]

    @staticmethod
    def showCompareLayout(results):
        """Input | reconstruction | heatmap side by side, with linked slice views. Returns what
        ``restoreLayout`` needs to undo it."""
        layoutManager = slicer.app.layoutManager()
        saved = {"layout": layoutManager.layout, "linked": {}}
        layoutManager.setLayout(scene.register_compare_layout(layoutManager.layoutLogic().GetLayoutNode()))
        volumes = [results.input, results.reconstruction, results.input]
        foregrounds = [None, None, results.heatmap]
        for name, background, foreground in zip(("Red", "Yellow", "Green"), volumes, foregrounds, strict=True):
            widget = layoutManager.sliceWidget(name)
            widget.mrmlSliceNode().SetOrientation("Axial")
            composite = widget.mrmlSliceCompositeNode()
            saved["linked"][name] = composite.GetLinkedControl()
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            composite.SetForegroundOpacity(0.5 if foreground else 0.0)
            composite.SetLinkedControl(True)
            widget.sliceLogic().FitSliceToAll()
        return saved

    @staticmethod
    def restoreLayout(saved):
        """Back to the layout and view links from before ``showCompareLayout``."""
        if not saved:
            return
        layoutManager = slicer.app.layoutManager()
        for name, linked in saved["linked"].items():
            widget = layoutManager.sliceWidget(name)
            if widget is not None:
                widget.mrmlSliceCompositeNode().SetLinkedControl(linked)
        layoutManager.setLayout(saved["layout"])


class MAEDiffAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest): the bundled demo model on the bundled sample, checked against its
    known lesion."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_detect_on_sample()

    def notReady(self, runtime: str):
        """Why detection on ``runtime`` cannot run in this Slicer (a fresh one, or the build farm's: the
        module installs its packages only when a user agrees), else None."""
        lacking = dependencies.missing(runtime)
        if lacking:
            return (f"This Slicer lacks {', '.join(lacking)}: click Detect anomalies once to install them, then run "
                    "the test again.")
        return None

    def test_detect_on_sample(self):
        import numpy as np

        runtime = dependencies.runtime_for("auto", "cpu")
        reason = self.notReady(runtime)
        if reason:
            self.delayDisplay(reason)
            self.skipTest(reason)
        import SampleData

        self.delayDisplay("Loading the sample from Sample Data")
        registerSampleData()
        volume = SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)
        truth = slicer.util.loadLabelVolume(str(sample_paths()[1]))
        logic = MAEDiffAnomalyLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.modelPath = default_model_path()
        parameters.device = "cpu"
        card = model_card.read_card(parameters.modelPath)
        self.delayDisplay("Running maediff detect (about 2 minutes on a CPU)")
        run = logic.startDetection(parameters, card, runtime)
        while run.process.running:  # the panel's timer, in a test: events served, not a busy loop
            slicer.app.processEvents()
            run.process.poll()
            time.sleep(0.1)
        ok, error = run.process.finished()
        self.assertTrue(ok, error)
        results = logic.finishDetection(run, 0.5)
        logic.removeWorkFolder(run)
        self.assertEqual(results.heatmap.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.assertEqual(results.table.GetTable().GetNumberOfRows(), len(results.rows))
        found = scene.lesion_label_array(results) > 0
        known = slicer.util.arrayFromVolume(truth) > 0
        dice = 2 * np.count_nonzero(found & known) / (np.count_nonzero(found) + np.count_nonzero(known))
        logging.info(f"Dice against the sample's known lesion: {dice:.3f}")
        # What `maediff demo --record` measured with the bundled model (its card, the README).
        recorded = card["metrics"]["sample"]
        self.assertAlmostEqual(dice, recorded["dice"]["mean"], delta=0.01)
        self.assertLessEqual(abs(len(results.rows) - recorded["lesions"]["mean"]), 2)
        stricter = scene.update_threshold(slicer.mrmlScene, results, results.threshold * 2)
        self.assertLessEqual(sum(r["voxels"] for r in stricter), sum(r["voxels"] for r in results.rows) or 0)
        logic.removeResultFiles(results)
        self.delayDisplay("Test passed")
