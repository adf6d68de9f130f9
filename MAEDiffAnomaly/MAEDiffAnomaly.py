"""MAEDiff Anomaly: unsupervised anomaly detection in brain T2 MRI, one click from a loaded volume.

The widget is thin: it keeps its state in a parameter node and hands the work to the logic, which
calls MAEDiffAnomalyLib (scene building, the detection subprocess) and, through it, the core's
``maediff detect`` command line.
"""

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MAEDiffAnomalyLib import dependencies, model_card, scene
from MAEDiffAnomalyLib.runner import DetectionProcess, DetectRequest, core_root, query_device
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

STAGES = {"starting": "Starting", "load": "Reading the volume", "preprocess": "Registration, brain mask, bias field",
          "reconstruct": "Reconstructing a healthy brain", "postprocess": "Scores and lesions",
          "write": "Writing results", "done": "Done"}


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
            " Research software, not for clinical use.")
        self.parent.acknowledgementText = (
            "Method: Xiong et al., MAEDiff (2024), built on patched DDPMs (Behrendt et al., MIDL 2023). "
            "Bundled atlas: MNI ICBM152 2009a (McConnell Brain Imaging Centre).")


@parameterNodeWrapper
class MAEDiffAnomalyParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    brainMask: vtkMRMLLabelMapVolumeNode
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    skullStripped: bool = False
    skipRegistration: bool = False
    tTest: Annotated[int, WithinRange(1, 1000)] = 500
    stride: Annotated[str, Choice(["16", "48"])] = "16"  # text, for the combo box binding
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.05
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    show3D: bool = False


class MAEDiffAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.process = None
        self.results = None
        self.timer = qt.QTimer()
        self.timer.setInterval(250)
        self.timer.timeout.connect(self.onPoll)

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
        self.ui.inspectButton.connect("clicked(bool)", self.onInspect)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3D)
        self.ui.detectDeviceButton.connect("clicked(bool)", self.onDetectDevice)
        # The threshold slider recomputes lesions (a second or so): only when the user lets go.
        self.ui.thresholdSlider.tracking = False
        self.initializeParameterNode()
        self.onModelChanged(self._parameterNode.modelPath)

    def cleanup(self):
        self.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event):
        self.cancel()
        self.results = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.GetAttribute(scene.ROLE):
                self._parameterNode.inputVolume = first
        if not self._parameterNode.modelPath:
            self._parameterNode.modelPath = str(self.logic.defaultModelPath())

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        running = self.process is not None
        self.ui.applyButton.text = "Cancel" if running else "Detect anomalies"
        self.ui.applyButton.enabled = running or bool(self._parameterNode and self._parameterNode.inputVolume)
        for widget in (self.ui.thresholdSlider, self.ui.opacitySlider, self.ui.inspectButton,
                       self.ui.exportButton, self.ui.show3DCheckBox):
            widget.enabled = self.results is not None and not running

    # -- model and device ------------------------------------------------------------------
    def onModelChanged(self, path):
        try:
            card = model_card.read_card(path)
        except (OSError, ValueError) as error:
            self.ui.modelCardLabel.text = f"No usable model: {error}"
            self.ui.syntheticWarningLabel.visible = False
            return
        self.ui.modelCardLabel.text = model_card.summary(card)
        self.ui.syntheticWarningLabel.visible = model_card.is_synthetic(card)
        if card.get("threshold") is not None:
            self._parameterNode.threshold = card["threshold"]
        self._parameterNode.tTest = card["config"]["diffusion"]["t_test"]

    def onDetectDevice(self):
        with slicer.util.tryWithErrorDisplay("Could not query the compute device.", waitCursor=True):
            if not self.logic.ensureRequirements():
                return
            info = query_device()
        if "error" in info:
            self.ui.deviceInfoLabel.text = info["error"]
        elif info.get("cuda"):
            self.ui.deviceInfoLabel.text = f"GPU: {info['name']} ({info['memory_gb']} GB), torch {info['torch']}"
        else:
            self.ui.deviceInfoLabel.text = f"No CUDA GPU: runs on the CPU (slow), torch {info['torch']}"

    # -- running ---------------------------------------------------------------------------
    def onApplyButton(self):
        if self.process is not None:
            self.cancel()
            return
        if not self.logic.ensureRequirements():
            return
        with slicer.util.tryWithErrorDisplay("Could not start the detection.", waitCursor=True):
            self.process = self.logic.startDetection(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = STAGES["starting"]
            self.timer.start()
        self.updateButtons()

    def onPoll(self):
        progress = self.process.poll()
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.statusLabel.text = f"{STAGES.get(progress.stage, progress.stage)} {progress.message}".strip()
        if self.process.running:
            return
        self.timer.stop()
        process, self.process = self.process, None
        ok, error = process.finished()
        for line in progress.log:
            logging.info(line)
        if ok:
            with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                self.results = self.logic.finishDetection(self._parameterNode, process)
                self.ui.lesionTableView.setMRMLTableNode(self.results.table)
                self.ui.statusLabel.text = f"{len(self.results.rows)} lesion candidate(s)"
        elif error != "cancelled":
            slicer.util.errorDisplay("Anomaly detection failed.", detailedText=error)
            self.ui.statusLabel.text = "Failed: see the details"
        self.logic.removeWorkFolder(process)
        self.updateButtons()

    def cancel(self):
        if self.process is None:
            return
        self.timer.stop()
        self.process.cancel()
        self.logic.removeWorkFolder(self.process)
        self.process = None
        self.ui.statusLabel.text = "Cancelled"
        self.ui.progressBar.value = 0
        self.updateButtons()

    # -- results ---------------------------------------------------------------------------
    def onThresholdChanged(self, value):
        if self.results is not None and self.process is None:
            with slicer.util.tryWithErrorDisplay("Could not update the lesions.", waitCursor=True):
                rows = scene.update_threshold(slicer.mrmlScene, self.results, value)
                self.ui.statusLabel.text = f"{len(rows)} lesion candidate(s) at threshold {value:.4f}"

    def onOpacityChanged(self, value):
        if self.results is not None:
            scene.show_overlay(slicer.mrmlScene, self.results, value)

    def onLesionClicked(self, index):
        if self.results is not None and index.row() < len(self.results.rows):
            ras = scene.lesion_position(self.results, index.row())
            slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)

    def onInspect(self):
        self.logic.showCompareLayout(self.results)

    def onShow3D(self, show):
        if self.results is None:
            return
        if show:
            self.results.lesions.CreateClosedSurfaceRepresentation()
        self.results.lesions.GetDisplayNode().SetVisibility3D(show)

    def onExport(self):
        folder = self.ui.exportDirectoryButton.directory
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            written = scene.export_results(slicer.mrmlScene, self.results, folder,
                                           self.logic.dicomFiles(self.results.input))
            self.ui.statusLabel.text = "Exported: " + ", ".join(p.name for p in written)


class MAEDiffAnomalyLogic(ScriptedLoadableModuleLogic):
    """Module logic: thin wrappers that give MAEDiffAnomalyLib what Slicer holds."""

    def getParameterNode(self):
        return MAEDiffAnomalyParameterNode(super().getParameterNode())

    @staticmethod
    def defaultModelPath() -> Path:
        return core_root() / "Resources" / "models" / "maediff-small-demo.json"

    def ensureRequirements(self) -> bool:
        """torch from the PyTorch extension, the rest from pip, each after asking."""
        if not dependencies.torch_available():
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("This module needs PyTorch: install the 'PyTorch' extension "
                                         "from the Extensions Manager and restart Slicer.")
                return False
            if not slicer.util.confirmOkCancelDisplay("PyTorch is not installed. Install it now "
                                                      "(several GB for a GPU build)?"):
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                slicer.util.errorDisplay("PyTorch could not be installed; see the log.")
                return False
        missing = dependencies.missing_packages()
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    f"This module needs these Python packages: {', '.join(missing)}. Install them now?"):
                return False
            with slicer.util.WaitCursor():
                for arguments in dependencies.pip_arguments(missing):
                    slicer.util.pip_install(arguments)
        return True

    def startDetection(self, parameters) -> DetectionProcess:
        inputVolume = parameters.inputVolume
        if inputVolume is None:
            raise ValueError("Select a T2 volume first.")
        work = Path(tempfile.mkdtemp(prefix="MAEDiffAnomaly-"))
        inputPath = scene.write_node(slicer.mrmlScene, inputVolume, work / "input.nrrd")
        maskPath = None
        if parameters.brainMask is not None:
            maskPath = scene.write_node(slicer.mrmlScene, parameters.brainMask, work / "mask.nrrd")
        request = DetectRequest(
            input_path=inputPath, output_dir=work / "output", model_path=Path(parameters.modelPath),
            device=parameters.device, mask_path=maskPath,
            mask_method="file" if maskPath else ("skull-stripped" if parameters.skullStripped else None),
            no_register=parameters.skipRegistration, t_test=parameters.tTest, stride=int(parameters.stride),
            threshold=parameters.threshold)
        process = DetectionProcess(request)
        process.work = work
        return process

    def finishDetection(self, parameters, process):
        resultDir = process.request.output_dir / "input"
        kept = Path(slicer.app.temporaryPath) / "MAEDiffAnomaly" / parameters.inputVolume.GetID()
        if kept.exists():
            shutil.rmtree(kept)
        shutil.copytree(resultDir, kept)  # the slider and export read from here after cleanup
        results = scene.load_results(slicer.mrmlScene, parameters.inputVolume, kept)
        scene.show_overlay(slicer.mrmlScene, results, parameters.opacity)
        parameters.threshold = results.threshold
        return results

    @staticmethod
    def removeWorkFolder(process):
        work = getattr(process, "work", None)
        if work is not None and work.exists():
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def dicomFiles(volumeNode):
        """Source DICOM files of a volume loaded from the DICOM database, else None."""
        uids = volumeNode.GetAttribute("DICOM.instanceUIDs")
        if not uids or not hasattr(slicer, "dicomDatabase") or slicer.dicomDatabase is None:
            return None
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids.split()]

    @staticmethod
    def showCompareLayout(results):
        """Input | reconstruction | heatmap side by side, with linked slice views."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(scene.register_compare_layout(layoutManager.layoutLogic().GetLayoutNode()))
        volumes = [results.input, results.reconstruction, results.input]
        foregrounds = [None, None, results.heatmap]
        for name, background, foreground in zip(("Red", "Yellow", "Green"), volumes, foregrounds):
            widget = layoutManager.sliceWidget(name)
            widget.mrmlSliceNode().SetOrientation("Axial")
            composite = widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            composite.SetForegroundOpacity(0.5 if foreground else 0.0)
            composite.SetLinkedControl(True)
            widget.sliceLogic().FitSliceToAll()


class MAEDiffAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest): the bundled demo model on a generated phantom with a tumour."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_detect_on_phantom()

    def test_detect_on_phantom(self):
        self.delayDisplay("Generating a phantom with a tumour")
        from maediff_core.phantom import make_phantom
        from maediff_core.volume_io import write_volume

        work = Path(tempfile.mkdtemp(prefix="MAEDiffAnomalyTest-"))
        phantom = make_phantom("tumour", 7)
        volume = slicer.util.loadVolume(str(write_volume(phantom.image, work / "phantom.nii.gz")))
        logic = MAEDiffAnomalyLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.modelPath = str(logic.defaultModelPath())
        parameters.device = "cpu"
        self.delayDisplay("Running maediff detect")
        process = logic.startDetection(parameters)
        while process.running:
            slicer.app.processEvents()
            process.poll()
        ok, error = process.finished()
        self.assertTrue(ok, error)
        results = logic.finishDetection(parameters, process)
        logic.removeWorkFolder(process)
        self.assertEqual(results.heatmap.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.assertEqual(results.table.GetTable().GetNumberOfRows(), len(results.rows))
        voxels = sum(row["voxels"] for row in results.rows)
        stricter = scene.update_threshold(slicer.mrmlScene, results, results.threshold * 2)
        self.assertLessEqual(sum(row["voxels"] for row in stricter), voxels)
        self.assertEqual(results.lesions.GetSegmentation().GetNumberOfSegments(), len(stricter))
        shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("Test passed")
