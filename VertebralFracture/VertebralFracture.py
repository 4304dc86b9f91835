"""VertebralFracture: vertebral body heights, Genant fracture grades and trabecular density on CT, with review.

Thin Slicer glue over ``VertebralFractureLib`` (Module, parameter node, Widget, Logic, Test). Everything the
reviewer does lives in MRML nodes (see ``VertebralFractureLib.slicer.mrml``), so saving the scene saves the review.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Public example CT (Apache-2.0, TotalSegmentator test data) pinned by commit and SHA-256: the self-test's CT and the
# module's Sample Data entry.
EXAMPLE_CT_URL = ("https://raw.githubusercontent.com/wasserth/TotalSegmentator/"
                  "0effae9d718aab0c118ce1f8982dcd16b9e32a50/tests/reference_files/example_ct.nii.gz")
EXAMPLE_CT_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"


def _makeLibImportable() -> None:
    """A source checkout (Additional module paths) has the Lib beside this folder; an installed one is on the path."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "VertebralFractureLib" / "__init__.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))


_makeLibImportable()
GRADE_CHOICES = (None, 0, 1, 2, 3)
MORPHOLOGY_CHOICES = (None, "normal", "wedge", "biconcave", "crush")


#
# VertebralFracture
#


class VertebralFracture(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Vertebral Fracture")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Segmentations", "Markups", "Tables"]
        self.parent.contributors = ["VertebralFracture project team"]
        self.parent.helpText = _(
            "Opportunistic osteoporosis screening on CT: finds and names the vertebrae, measures vertebral body "
            "heights (six morphometry points), grades compression fractures (Genant) and trabecular attenuation. "
            "Drag the height lines to correct points; override grades, fix levels, re-measure after editing "
            "segments, write the clinical report (bone density, referral recommendation, DICOM SEG + SR), save the "
            "scene or export curated training data. "
            '<a href="https://github.com/VertebralFracture/SlicerVertebralFracture/blob/main/README.md">Documentation</a>.'
            "<p><b>"
            "Research use only — not a diagnosis. Not a medical device; a clinician must review the images."
            "</b></p>"
        )
        self.parent.acknowledgementText = _(
            "Genant semi-quantitative grading (Genant et al., JBMR 1993). VerSe dataset layout (Sekuboyina et al., "
            "Medical Image Analysis 2021)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The example CT in the Sample Data module (downloaded on request, checked against its SHA-256)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Vertebral Fracture", sampleName="VertebralFractureExampleCT", uris=EXAMPLE_CT_URL,
        fileNames="VertebralFractureExampleCT.nii.gz", nodeNames="VertebralFractureExampleCT",
        checksums=f"SHA256:{EXAMPLE_CT_SHA256}",
        thumbnailFileName=os.path.join(iconsPath, "VertebralFractureExampleCT.png"))


#
# Parameter node
#


@parameterNodeWrapper
class VertebralFractureParameterNode:
    """What the panel shows, kept in the scene.

    Node parameters may be None (nothing selected). inputVolume: CT in Hounsfield units. inputSegmentation:
    optional segments named by level. includeUpperThoracic: grade T1-T3 too (Genant grading is defined for T4-L5).
    backend, device: automatic segmentation. caseTable: the selected case (its table node is the hub).
    exportFolder: dataset folder for curated training data. reportFolder (each case writes into its own folder in
    it), reportDicom (DICOM SEG + SR), reportDeidentify, reportPseudonym: the clinical report.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    backend: Annotated[str, Choice(["Automatic", "classical", "monai", "totalsegmentator"])] = "Automatic"
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    includeUpperThoracic: bool = False
    caseTable: vtkMRMLTableNode
    exportFolder: Path = Path.home() / "VertebralFracture-dataset"
    reportFolder: Path = Path.home() / "VertebralFracture-reports"
    reportDicom: bool = False
    reportDeidentify: bool = False
    reportPseudonym: str = ""


#
# Widget
#


class VertebralFractureWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._case = None
        self._job = None
        self._jobVolumeNode = None
        self._stopWatchingJob = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._pollJob)
        self._updatingReview = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VertebralFracture.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.caseTableSelector.addAttribute("vtkMRMLTableNode", "VertebralFracture.Role", "case")
        self.ui.exportFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Writable
        self.ui.reportFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Writable
        self.logic = VertebralFractureLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.vertebraComboBox.connect("currentIndexChanged(int)", self.onVertebraSelected)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.gradeOverrideComboBox.connect("currentIndexChanged(int)", self.onGradeOverride)
        self.ui.morphologyOverrideComboBox.connect("currentIndexChanged(int)", self.onMorphologyOverride)
        self.ui.reviewedCheckBox.connect("toggled(bool)", self.onReviewed)
        self.ui.setLevelButton.connect("clicked(bool)", self.onSetLevel)
        self.ui.remeasureButton.connect("clicked(bool)", self.onRemeasure)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveScene)
        self.ui.writeReportButton.connect("clicked(bool)", self.onWriteReport)
        from VertebralFractureLib.segment.renumber import level_choices  # numpy only: safe before the dependency check

        self.ui.newLevelComboBox.addItems(level_choices())

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._pollJob()
        self._setCase(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:  # its CT goes with the scene: stop it (cancel_job_with_scene may have already)
            self._job.cancel()
            self._pollJob()
        self._setCase(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:  # a loaded .mrb's table exists only once the import ended
        if self.parent.isEntered:
            self.initializeParameterNode()
            self._setCase(self._parameterNode.caseTable if self._parameterNode else None)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: VertebralFractureParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectGui binds every widget whose SlicerParameterName property names a parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        table = self._parameterNode.caseTable if self._parameterNode else None
        if (self._case is None) != (table is None) or (self._case and self._case.table_node is not table):
            self._setCase(table)

    def _checkCanApply(self) -> None:
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.toolTip = _("Segment (if needed), measure and grade") if ready else _("Select a CT volume")

    # ---- analysis -----------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if not self._ensureDependencies():
            return
        parameters = self._parameterNode
        options = {"includeUpperThoracic": parameters.includeUpperThoracic}
        with slicer.util.tryWithErrorDisplay(_("Analysis failed."), waitCursor=True):
            if parameters.inputSegmentation is not None:
                case = self.logic.analyze(parameters.inputVolume, parameters.inputSegmentation, **options)
                self._showCase(case)
                return
            self._jobVolumeNode = parameters.inputVolume
            self.ui.logTextEdit.clear()
            self._job = self.logic.startSegmentation(parameters.inputVolume, parameters.backend, parameters.device,
                                                     onProgress=self._onProgress, onOutput=self._log, **options)
            from VertebralFractureLib.slicer import mrml

            # Closing the scene or deleting the CT cancels the job: no result for a CT that is gone.
            self._stopWatchingJob = mrml.cancel_job_with_scene(slicer.mrmlScene, self._job, self._jobVolumeNode)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Segmenting...")
            self._timer.start()
            self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _log(self, line: str) -> None:
        """A line of the running child process (segmentation, pip) into the panel's live log."""
        self.ui.logTextEdit.appendPlainText(line)

    def _ensureDependencies(self, group: str = "core") -> bool:
        """Install what ``group`` lacks if the user agrees (asked only here, on a button press), showing pip's
        progress in the status line and the log; a failure is one line in the panel, its details in the log."""
        from VertebralFractureLib.slicer import dependencies

        def onOutput(line: str) -> None:
            self._log(line)
            self.ui.statusLabel.text = line[:120]

        self.ui.progressBar.visible, self.ui.progressBar.maximum = True, 0  # busy while pip runs
        try:
            return self.logic.ensureDependencies(group=group, onOutput=onOutput)
        except dependencies.InstallError as error:
            self.ui.statusLabel.text = str(error)
            self.ui.logCollapsibleButton.collapsed = False
            return False
        finally:
            self.ui.progressBar.visible, self.ui.progressBar.maximum = False, 100

    def _pollJob(self) -> None:
        from VertebralFractureLib.slicer import process

        job = self._job
        state = job.poll()
        if state == process.RUNNING:
            return
        self._timer.stop()
        self._job = None
        if self._stopWatchingJob is not None:
            self._stopWatchingJob()
            self._stopWatchingJob = None
        self.ui.progressBar.visible = False
        try:
            if state == process.FINISHED and not slicer.mrmlScene.IsNodePresent(self._jobVolumeNode):
                self.ui.statusLabel.text = _("Cancelled: the CT was removed")
            elif state == process.FINISHED:
                with slicer.util.tryWithErrorDisplay(_("Measuring failed."), waitCursor=True):
                    case = self.logic.analyze(self._jobVolumeNode, labels=job.labels(), case=job.case())
                    self._showCase(case)
                    self.ui.statusLabel.text = _("Done: {backend}").format(backend=job.backend_summary())
            elif state == process.CANCELLED:
                self.ui.statusLabel.text = _("Cancelled")
            else:
                message = job.runner.error_message()
                self.ui.statusLabel.text = _("Segmentation failed: {message}").format(message=message)
                self.ui.logCollapsibleButton.collapsed = False  # the child's output is in the live log
        finally:
            job.cleanup()
            self._jobVolumeNode = None
            self._checkCanApply()

    def onCancelButton(self) -> None:
        if self._job is not None:
            logging.info("Cancelling the segmentation")
            self._job.cancel()

    def _showCase(self, case) -> None:
        self._parameterNode.caseTable = case.table_node
        self.logic.showCase(case)

    # ---- review -------------------------------------------------------------------------------------------

    def _setCase(self, tableNode) -> None:
        if self._case is not None and self._refreshReview in self._case.listeners:
            self._case.listeners.remove(self._refreshReview)
        if tableNode is not None and self.logic.missingDependencies():
            # Asked only on a button press: an automatic refresh (each keystroke in a field) never asks.
            self.ui.statusLabel.text = _("Python packages are missing: press Apply to install them.")
            tableNode = None
        self._case = self.logic.caseFor(tableNode) if tableNode is not None else None
        self.ui.resultsTableView.setMRMLTableNode(tableNode)
        if self._case is not None:
            self._case.listeners.append(self._refreshReview)
        self._refreshReview()

    def _refreshReview(self, case=None) -> None:
        self._updatingReview = True
        try:
            enabled = self._case is not None
            for widget in (self.ui.vertebraComboBox, self.ui.gradeOverrideComboBox, self.ui.morphologyOverrideComboBox,
                           self.ui.reviewedCheckBox, self.ui.setLevelButton, self.ui.remeasureButton,
                           self.ui.exportButton, self.ui.saveSceneButton, self.ui.writeReportButton):
                widget.enabled = enabled
            current = self.ui.vertebraComboBox.currentText
            self.ui.vertebraComboBox.clear()
            self.ui.recommendationLabel.text = self.logic.recommendationText(self._case) if enabled else ""
            if not enabled:
                self.ui.summaryTextEdit.setPlainText("")
                return
            levels = [v.level for v in self._case.case.vertebrae]
            self.ui.vertebraComboBox.addItems(levels)
            if current in levels:
                self.ui.vertebraComboBox.currentIndex = levels.index(current)
            self.ui.summaryTextEdit.setPlainText(self._case.summary())
        finally:
            self._updatingReview = False
        # Refreshes follow every drag: controls only, no jump of the views (that is for the user's selection).
        self._updateReviewControls()

    def _selectedLevel(self):
        return self.ui.vertebraComboBox.currentText or None

    def onTableClicked(self, index) -> None:
        if self._case is not None and 0 <= index.row() < len(self._case.case.vertebrae):
            self.ui.vertebraComboBox.currentIndex = index.row()

    def onVertebraSelected(self, index=None) -> None:
        if self._updatingReview:
            return
        vertebra = self._updateReviewControls()
        if vertebra is not None and vertebra.centroid_ras:
            slicer.modules.markups.logic().JumpSlicesToLocation(*vertebra.centroid_ras, True)

    def _updateReviewControls(self):
        """Show the selected vertebra's override, morphology and reviewed flag; returns the vertebra."""
        level = self._selectedLevel()
        if self._case is None or level is None:
            return None
        vertebra = self._case.vertebra(level)
        self._updatingReview = True
        try:
            self.ui.gradeOverrideComboBox.currentIndex = GRADE_CHOICES.index(vertebra.grade_override)
            self.ui.morphologyOverrideComboBox.currentIndex = MORPHOLOGY_CHOICES.index(vertebra.morphology_override)
            self.ui.reviewedCheckBox.checked = vertebra.reviewed
            self.ui.newLevelComboBox.currentText = level
        finally:
            self._updatingReview = False
        return vertebra

    def onGradeOverride(self, index: int) -> None:
        if not self._updatingReview and self._case is not None and self._selectedLevel():
            self._case.set_grade_override(self._selectedLevel(), GRADE_CHOICES[index])

    def onMorphologyOverride(self, index: int) -> None:
        if not self._updatingReview and self._case is not None and self._selectedLevel():
            self._case.set_morphology_override(self._selectedLevel(), MORPHOLOGY_CHOICES[index])

    def onReviewed(self, checked: bool) -> None:
        if not self._updatingReview and self._case is not None and self._selectedLevel():
            self._case.set_reviewed(self._selectedLevel(), checked)

    def onSetLevel(self) -> None:
        level, newLevel = self._selectedLevel(), self.ui.newLevelComboBox.currentText
        if self._case is None or not level or level == newLevel:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot renumber the levels."), waitCursor=True):
            self._case.set_level(level, newLevel)
            self.ui.vertebraComboBox.currentIndex = [v.level for v in self._case.case.vertebrae].index(newLevel)

    def onRemeasure(self) -> None:
        if self._case is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Re-measuring failed."), waitCursor=True):
            self._case.remeasure()
            self._case.start_observing()

    # ---- output -------------------------------------------------------------------------------------------

    def onExport(self) -> None:
        if self._case is None:
            return
        subject = self.ui.subjectIdLineEdit.text.strip() or None
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self._case.export_training_data(self._parameterNode.exportFolder, subject)
            slicer.util.infoDisplay(_("Exported to {folder}").format(folder=written["ct"].parents[2]))

    def onWriteReport(self) -> None:
        if self._case is None:
            return
        parameters = self._parameterNode
        if parameters.reportDicom and not self._ensureDependencies(group="dicom"):
            return
        # The case's own folder in the reports folder: another case's report never replaces this one's.
        folder = self._case.report_folder(parameters.reportFolder, parameters.reportDeidentify,
                                          parameters.reportPseudonym)
        with slicer.util.tryWithErrorDisplay(_("Writing the report failed."), waitCursor=True):
            self._case.write_report(folder, dicom_out=parameters.reportDicom, deidentify=parameters.reportDeidentify,
                                    pseudonym=parameters.reportPseudonym)
        # The new recommendation shows through the case's listener (_refreshReview): no modal box to dismiss.

    def onSaveScene(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save review"), "",
                                              _("Medical Reality Bundle (*.mrb)"))
        if path:
            if not path.lower().endswith(".mrb"):
                path += ".mrb"
            with slicer.util.tryWithErrorDisplay(_("Saving the scene failed."), waitCursor=True):
                if not slicer.util.saveScene(path):
                    raise OSError(f"{path}: the scene could not be saved")


#
# Logic
#


class VertebralFractureLogic(ScriptedLoadableModuleLogic):
    """Runs without the widget (scripts, batch, self-test); the rules are in VertebralFractureLib.slicer.mrml."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._cases = {}

    def getParameterNode(self):
        return VertebralFractureParameterNode(super().getParameterNode())

    @staticmethod
    def missingDependencies(group: str = "core") -> list:
        from VertebralFractureLib.slicer import dependencies

        return dependencies.missing(group, skip=dependencies.SLICER_PROVIDED)

    def ensureDependencies(self, askConfirmation: bool = True, group: str = "core", onOutput=None) -> bool:
        """Install what ``VertebralFractureLib/requirements/GROUP.txt`` lists and is missing, if the user agrees:
        pip in a child process, each output line to ``onOutput``; raises ``dependencies.InstallError`` (one line)."""
        from VertebralFractureLib.slicer import dependencies

        def confirm(missing) -> bool:
            message = _("Vertebral Fracture needs these Python packages: {packages}. Install them now?").format(
                packages=", ".join(missing))
            if group == "dicom" and dependencies.version_tuple(dependencies.installed_version("pydicom") or "0") < (3,):
                message += " " + _("highdicom needs pydicom 3: Slicer's pydicom 2.4 will be upgraded.")
            return not askConfirmation or slicer.util.confirmOkCancelDisplay(message)

        return dependencies.ensure(group, dependencies.pip_installer(onOutput, slicer.app.processEvents), confirm)

    def ensureBackend(self, backend: str, volumeNode=None, askConfirmation: bool = True, onOutput=None) -> bool:
        """Install what the chosen segmentation method lacks (TotalSegmentator and its weights; PyTorch, MONAI and the
        whole-body model) after one question listing each step and its licence (slicer.deep_install of the Lib)."""
        from VertebralFractureLib.slicer import deep_install, dependencies

        def confirm(question: str, licences: str) -> bool:
            return not askConfirmation or slicer.util.confirmOkCancelDisplay(question, detailedText=licences)

        pipInstall = dependencies.pip_installer(onOutput, slicer.app.processEvents)
        with deep_install.PanelProgress(slicer) as progress:
            spacing = volumeNode.GetSpacing() if volumeNode is not None else None
            installed = deep_install.ensure(backend, spacing, pipInstall, confirm, progress)
        for line in deep_install.installed_summary().splitlines() if onOutput else []:
            onOutput(line)  # the panel's log lists what the deep backends have (as `models list` does)
        return installed

    # ---- analysis -----------------------------------------------------------------------------------------

    def startSegmentation(self, volumeNode, backend: str = "Automatic", device: str = "auto", onProgress=None,
                          includeUpperThoracic: bool = False, onOutput=None):
        """Start segmenting in a child process (``PythonSlicer -m VertebralFractureLib analyze``); returns the job."""
        from VertebralFractureLib.segment import AUTO, PANEL_BACKENDS
        from VertebralFractureLib.slicer import mrml, process
        installed = self.ensureBackend(backend, volumeNode, onOutput=onOutput)
        if not installed and PANEL_BACKENDS.get(backend, backend) != AUTO:
            raise RuntimeError(_("The segmentation method {backend} is not installed").format(backend=backend))
        job = process.SegmentationJob(mrml.volume_from_node(volumeNode), backend=backend, device=device,
                                      on_progress=onProgress, on_output=onOutput,
                                      include_upper_thoracic=includeUpperThoracic)
        return job.start()

    def segment(self, volumeNode, backend: str = "Automatic", device: str = "auto", onProgress=None,
                timeout: float | None = None, includeUpperThoracic: bool = False):
        """Blocking analysis in the child process: (VerSe-id label volume on the CT grid, the child's CaseResult)."""
        job = self.startSegmentation(volumeNode, backend, device, onProgress, includeUpperThoracic)
        try:
            return job.wait(timeout), job.case()
        finally:
            job.cleanup()

    def analyze(self, volumeNode, segmentationNode=None, labels=None, backend: str = "Automatic",
                device: str = "auto", case=None, includeUpperThoracic: bool = False):
        """Measure and grade a CT; vertebrae from a segmentation node, a label volume, or segmented here. ``case``: the
        child's results on ``labels``, shown as they are (the same pipeline as the command line and batch)."""
        from VertebralFractureLib.slicer import mrml

        if segmentationNode is None and labels is None:
            labels, case = self.segment(volumeNode, backend, device, includeUpperThoracic=includeUpperThoracic)
        if case is not None:
            case.inputs["ct"] = volumeNode.GetName()
        case = mrml.VertebralFractureCase.create(volumeNode, segmentation_node=segmentationNode, labels=labels,
                                                 case=case, include_upper_thoracic=includeUpperThoracic)
        case.start_observing()
        self._cases[case.table_node.GetID()] = case
        return case

    def caseFor(self, tableNode):
        """The live case of a table node (made once per node, e.g. after loading a saved scene)."""
        from VertebralFractureLib.slicer import mrml

        case = self._cases.get(tableNode.GetID())
        if case is None or case.table_node is not tableNode:
            case = mrml.VertebralFractureCase.from_table_node(tableNode)
            case.start_observing()
            self._cases[tableNode.GetID()] = case
        return case

    @staticmethod
    def showCase(case) -> None:
        """CT in the slice views, segments outlined, the table in the layout."""
        slicer.util.setSliceViewerLayers(background=case.volume_node, fit=True)
        case.segmentation_node.CreateDefaultDisplayNodes()
        case.segmentation_node.GetDisplayNode().SetOpacity2DFill(0.2)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:  # None when Slicer runs without a main window
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(case.table_node.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    @staticmethod
    def recommendationText(case) -> str:
        """The last screening's recommendation, where the report went, and whether grades changed since."""
        stored = case.screening()
        if stored is None:
            return _("No report written yet.")
        recommendation = stored["screening"]["recommendation"]
        folder = os.path.dirname(stored["written"].get("report_html", ""))
        text = _("{statement} (confidence: {confidence}). Report: {folder}").format(
            statement=recommendation["statement"], confidence=recommendation["confidence"], folder=folder)
        return text if case.screening_current() else text + " " + _("Grades changed since: write the report again.")


#
# Test
#


class VertebralFractureTest(ScriptedLoadableModuleTest):
    """Self-test on a public spine CT: the whole logic, with levels and grades checked.

    Offline (CI) it reads ``$VERTEBRAL_FRACTURE_DATA/totalsegmentator-example/example_ct.nii.gz``; else it downloads
    the CT at a pinned commit and checks its SHA-256.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()
        # ctest runs each test_* method on its own, in alphabetical order: every one needs the packages first.
        self.assertTrue(VertebralFractureLogic().ensureDependencies(askConfirmation=False))

    def runTest(self):
        self.setUp()
        self.test_ReviewWorkflowOnExampleCT()
        self.setUp()
        self.test_PanelWithGivenSegmentation()
        self.setUp()
        self.test_AutomaticSegmentation()
        self.test_BenchmarkOnPublicVerSe()  # reads files only: no scene to clear

    def _exampleCtPath(self) -> str:
        local = os.environ.get("VERTEBRAL_FRACTURE_DATA")
        if local and os.path.exists(os.path.join(local, "totalsegmentator-example", "example_ct.nii.gz")):
            return os.path.join(local, "totalsegmentator-example", "example_ct.nii.gz")
        target = os.path.join(slicer.app.cachePath, "VertebralFracture", "example_ct.nii.gz")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        downloaded = slicer.util.downloadFile(EXAMPLE_CT_URL, target, checksum=f"SHA256:{EXAMPLE_CT_SHA256}")
        self.assertTrue(downloaded, f"download of {EXAMPLE_CT_URL} failed or its SHA-256 differs")
        return target

    def _exampleLabels(self, ctPath: str):
        """The example's vertebral-body label map when it lies beside the CT (shared test data), else None."""
        from VertebralFractureLib import io

        path = os.path.join(os.path.dirname(ctPath), "spine_report", "totalseg_vertebrae_pp_refined.nii.gz")
        return io.read_label_map(path).volume if os.path.exists(path) else None

    def test_ReviewWorkflowOnExampleCT(self):
        import numpy as np

        from VertebralFractureLib.slicer import mrml

        self.delayDisplay("Loading the example CT")
        ctPath = self._exampleCtPath()
        volumeNode = slicer.util.loadVolume(ctPath)
        logic = VertebralFractureLogic()
        labels = self._exampleLabels(ctPath)
        case = logic.analyze(volumeNode, labels=labels)
        levels = [v.level for v in case.case.vertebrae]
        self.assertEqual(levels[-5:], ["L1", "L2", "L3", "L4", "L5"])
        complete = [v for v in case.case.vertebrae if v.complete]
        self.assertGreaterEqual(len(complete), 5)
        self.assertTrue(all(v.genant_grade == 0 for v in complete), "the example is a normal spine")

        self.delayDisplay("Dragging L2's inferior anterior point 10 mm up")
        line = case.line_node("L2", "anterior")
        position = [0.0, 0.0, 0.0]
        line.GetNthControlPointPositionWorld(1, position)
        superior = np.asarray(case.vertebra("L2").axes_ras["superior"])
        line.SetNthControlPointPositionWorld(1, *(np.asarray(position) + 10.0 * superior))
        row = next(r for r in mrml.table_rows(case.table_node) if r["Level"] == "L2")
        self.assertGreaterEqual(row["Grade"], 2)

        self.delayDisplay("Override, reviewed flag, level fix, save and reload")
        case.set_grade_override("L3", 1)
        case.set_reviewed("L4")
        case.set_level("L1", "T12")
        scenePath = os.path.join(slicer.app.temporaryPath, "VertebralFractureSelfTest.mrb")
        self.assertTrue(slicer.util.saveScene(scenePath))
        saved = case.case.to_dict()
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(scenePath)
        restored = mrml.find_cases(slicer.mrmlScene)
        self.assertEqual(len(restored), 1)
        self.assertEqual(restored[0].case.to_dict(), saved)
        self.delayDisplay("Review workflow passed")

    def test_PanelWithGivenSegmentation(self):
        """The panel's own path: a segmentation named by level, Apply, then an override from the combo box."""
        from VertebralFractureLib.slicer import mrml

        ctPath = self._exampleCtPath()
        labels = self._exampleLabels(ctPath)
        if labels is None:
            self.delayDisplay("No example label map beside the CT: panel test skipped")
            return
        volumeNode = slicer.util.loadVolume(ctPath)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "given vertebrae")
        mrml.fill_segmentation_from_labels(segmentationNode, labels, volumeNode)
        slicer.util.selectModule("VertebralFracture")
        widget = slicer.modules.VertebralFractureWidget
        widget._parameterNode.inputVolume = volumeNode
        widget._parameterNode.inputSegmentation = segmentationNode
        widget.onApplyButton()
        tableNode = widget._parameterNode.caseTable
        self.assertIsNotNone(tableNode)
        self.assertEqual(widget.ui.vertebraComboBox.count, len(mrml.vertebra_segments(segmentationNode)))
        widget.ui.vertebraComboBox.currentIndex = widget.ui.vertebraComboBox.findText("L3")
        widget.ui.gradeOverrideComboBox.currentIndex = GRADE_CHOICES.index(2)
        row = next(r for r in mrml.table_rows(tableNode) if r["Level"] == "L3")
        self.assertEqual((row["Grade"], row["Grade override"]), (2, 2))
        self.assertIn("L3 grade 2", widget.ui.summaryTextEdit.plainText)
        widget._parameterNode.reportFolder = Path(slicer.app.temporaryPath) / "VertebralFractureSelfTestReports"
        widget.onWriteReport()
        case = widget.logic.caseFor(tableNode)
        self.assertTrue((case.report_folder(widget._parameterNode.reportFolder) / "report.pdf").exists())
        self.assertIn("grade 2", widget.ui.recommendationLabel.text)
        self.delayDisplay("Panel test passed")

    def test_AutomaticSegmentation(self):
        from VertebralFractureLib.cli import common, entry

        entry._load_command_modules()
        if "analyze" not in common._COMMANDS:
            self.delayDisplay("No segmentation backend installed: automatic segmentation not tested")
            return
        volumeNode = slicer.util.loadVolume(self._exampleCtPath())
        logic = VertebralFractureLogic()
        case = logic.analyze(volumeNode, backend="classical", device="cpu")
        levels = [v.level for v in case.case.vertebrae if v.complete]
        for level in ("L1", "L2", "L3", "L4", "L5"):
            self.assertIn(level, levels)
        self.assertTrue(all(v.genant_grade == 0 for v in case.case.vertebrae if v.complete))
        self.delayDisplay("Automatic segmentation passed")

    def test_BenchmarkOnPublicVerSe(self):
        from VertebralFractureLib.benchmark import self_test
        self.delayDisplay(self_test(os.path.join(slicer.app.temporaryPath, "VertebralFractureBenchmark")))
