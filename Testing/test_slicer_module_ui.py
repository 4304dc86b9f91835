"""The Slicer module's glue, checked without Slicer: its .ui loads (PySide6, offscreen) and holds every widget the
module code names, the parameter node matches the widgets bound to it, the CMake lists name existing files, and
the scripting example of the README runs.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE = REPOSITORY / "VertebralFracture" / "VertebralFracture.py"
UI_FILE = REPOSITORY / "VertebralFracture" / "Resources" / "UI" / "VertebralFracture.ui"
DOCS = REPOSITORY / "README.md"


@pytest.fixture(scope="module")
def ui_widgets():
    """objectName -> (class name, SlicerParameterName or None, combo box items) of every widget in the .ui."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    qt_widgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is needed to load the .ui file")
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    app = qt_widgets.QApplication.instance() or qt_widgets.QApplication([])
    handle = QFile(str(UI_FILE))
    assert handle.open(QIODevice.ReadOnly), f"{UI_FILE} cannot be opened"
    loader = QUiLoader()
    root = loader.load(handle)
    handle.close()
    assert root is not None, loader.errorString()
    widgets = {}
    for widget in [root, *root.findChildren(qt_widgets.QWidget)]:
        name = widget.objectName()
        if not name or name.startswith("qt_"):
            continue
        parameter = widget.property("SlicerParameterName")
        items = [widget.itemText(i) for i in range(widget.count())] if isinstance(widget, qt_widgets.QComboBox) \
            else None
        widgets[name] = (widget.metaObject().className(), parameter, items)
    root.deleteLater()
    app.processEvents()
    return widgets


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE.read_text(encoding="utf-8"), filename=str(MODULE))


def _ui_names_used(tree) -> set[str]:
    """Every ``self.ui.NAME`` in the module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            names.add(node.attr)
    return names


def _parameter_fields(tree) -> dict[str, ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def _choices(annotation) -> list[str] | None:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Choice":
            return [element.value for element in node.args[0].elts]
    return None


def test_every_widget_the_module_names_exists(ui_widgets, module_tree):
    used = _ui_names_used(module_tree)
    assert len(used) > 15
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"the module uses widgets that {UI_FILE.name} lacks: {missing}"


def test_parameter_node_and_bound_widgets_agree(ui_widgets, module_tree):
    fields = _parameter_fields(module_tree)
    bound = {parameter: name for name, (_cls, parameter, _items) in ui_widgets.items() if parameter}
    assert set(bound) <= set(fields), f"widgets bound to unknown parameters: {set(bound) - set(fields)}"
    assert set(bound) == {"inputVolume", "inputSegmentation", "backend", "device", "includeUpperThoracic",
                          "caseTable", "exportFolder", "reportFolder", "reportDicom", "reportDeidentify",
                          "reportPseudonym"}
    for parameter, widget in bound.items():
        choices = _choices(fields[parameter])
        if choices is not None:
            assert ui_widgets[widget][2] == choices, f"{widget} items differ from the {parameter} choices"
    assert ui_widgets[bound["inputVolume"]][0] in ("qMRMLNodeComboBox", "QWidget")
    # The report's options: the widget kind must suit the parameter's type (bool: check box, str: line edit).
    assert ui_widgets[bound["reportDicom"]][0] == ui_widgets[bound["reportDeidentify"]][0] == "QCheckBox"
    assert ui_widgets[bound["reportPseudonym"]][0] == "QLineEdit"
    assert ui_widgets[bound["includeUpperThoracic"]][0] == "QCheckBox"


def test_upper_thoracic_option_reaches_both_paths_of_apply(module_tree):
    """The check box's parameter goes to the analysis of a given segmentation and to the child process alike."""
    apply = next(node for node in ast.walk(module_tree)
                 if isinstance(node, ast.FunctionDef) and node.name == "onApplyButton")
    assert any(isinstance(node, ast.Attribute) and node.attr == "includeUpperThoracic" for node in ast.walk(apply)), \
        "onApplyButton does not read the includeUpperThoracic parameter"
    calls = {node.func.attr: node for node in ast.walk(apply)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    for name in ("analyze", "startSegmentation"):
        assert any(keyword.arg is None or keyword.arg == "includeUpperThoracic" for keyword in calls[name].keywords), \
            f"onApplyButton calls {name} without the option"
    logic = next(node for node in module_tree.body if isinstance(node, ast.ClassDef)
                 and node.name == "VertebralFractureLogic")
    for method in logic.body:
        if isinstance(method, ast.FunctionDef) and method.name in ("analyze", "segment", "startSegmentation"):
            assert "includeUpperThoracic" in [a.arg for a in method.args.args], method.name


def test_override_combo_boxes_match_the_choices_indexed_in_code(ui_widgets, module_tree):
    constants = {}
    for node in module_tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    grades = ui_widgets["gradeOverrideComboBox"][2]
    morphologies = ui_widgets["morphologyOverrideComboBox"][2]
    assert len(grades) == len(constants["GRADE_CHOICES"])
    assert [g.split()[0] for g in grades[1:]] == [str(g) for g in constants["GRADE_CHOICES"][1:]]
    assert morphologies[1:] == list(constants["MORPHOLOGY_CHOICES"][1:])
    # The dependencies are declared once, in VertebralFractureLib/requirements/*.txt, not in the module.
    assert "REQUIRED_PACKAGES" not in constants


def test_module_is_thin_and_imports_the_lib_lazily(module_tree):
    lines = MODULE.read_text(encoding="utf-8").count("\n")
    assert lines < 750, f"the module file has {lines} lines; logic belongs in VertebralFractureLib"
    top_level_imports = [node for node in module_tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in top_level_imports:
        module = getattr(node, "module", None) or node.names[0].name
        assert not module.startswith("VertebralFractureLib"), "the Lib must be imported after the dependency check"
    classes = {node.name for node in module_tree.body if isinstance(node, ast.ClassDef)}
    assert {"VertebralFracture", "VertebralFractureParameterNode", "VertebralFractureWidget",
            "VertebralFractureLogic", "VertebralFractureTest"} <= classes


def test_cmake_lists_name_existing_files():
    module_cmake = (REPOSITORY / "VertebralFracture" / "CMakeLists.txt").read_text()
    for relative in re.findall(r"^\s+((?:\$\{MODULE_NAME\}|Resources|Batch)[^\s)]*)", module_cmake, re.MULTILINE):
        path = REPOSITORY / "VertebralFracture" / relative.replace("${MODULE_NAME}", "VertebralFracture")
        assert path.exists(), f"VertebralFracture/CMakeLists.txt names {relative}, which does not exist"
    top = (REPOSITORY / "CMakeLists.txt").read_text()
    assert 'set(VertebralFracture_MINIMUM_SLICER_VERSION "5.10")' in top
    assert "VertebralFractureLib/*.py" in top and "add_subdirectory(VertebralFracture)" in top


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)


def test_scripting_example_of_the_docs_runs(shared_file, tmp_path):
    """The fenced ``python`` block under "Scripting" in the README runs as written (outside Slicer)."""
    pytest.importorskip("slicer", reason="slicer-core (PyPI) is needed for the MRML example")
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Scripting", 1)[1].split("\n### ", 1)[0]
    blocks = _python_blocks(section)
    assert blocks, "the README has no python block in its Scripting section"
    data = shared_file("totalsegmentator-example/example_ct.nii.gz").parents[1]
    env = dict(os.environ, VERTEBRAL_FRACTURE_DATA=str(data), PYTHONPATH=str(REPOSITORY))
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "L1" in result.stdout
    assert (tmp_path / "review.mrb").exists()


def _function(tree, name: str) -> ast.FunctionDef:
    return next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name)


def _calls(function: ast.AST) -> set[str]:
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(function) if isinstance(node, ast.Call)}


def test_automatic_refreshes_never_ask_to_install(module_tree):
    """Declining the install asked once per keystroke in the pseudonym field: every parameter change refreshed the
    case, and the refresh asked. Only button presses may ask (and install); refreshes only look."""
    for name in ("_onParameterNodeModified", "_setCase", "_refreshReview", "_checkCanApply", "onSceneEndImport"):
        asked = _calls(_function(module_tree, name)) & {"ensureDependencies", "_ensureDependencies", "ensureBackend",
                                                         "confirmOkCancelDisplay"}
        assert not asked, f"{name} asks the user ({asked}); a refresh must only check (missingDependencies)"
    assert "missingDependencies" in _calls(_function(module_tree, "_setCase"))
    for name in ("onApplyButton", "onWriteReport"):
        assert "_ensureDependencies" in _calls(_function(module_tree, name)), name


def test_installs_show_in_the_panel(ui_widgets, module_tree):
    """pip's lines reach the panel's live log and status line, a failure is the status line's one line; the
    install runs through the Lib's pip child (no Slicer pip dialog), and the segmentation's output goes to the same
    collapsible log."""
    assert ui_widgets["logTextEdit"][0] == "QPlainTextEdit"
    assert ui_widgets["logCollapsibleButton"][0] in ("ctkCollapsibleButton", "QWidget")
    ensure = _function(module_tree, "_ensureDependencies")
    assert "InstallError" in {node.attr for node in ast.walk(ensure) if isinstance(node, ast.Attribute)}
    logic_ensure = _function(module_tree, "ensureDependencies")
    assert "pip_installer" in _calls(logic_ensure) and "pip_install" not in _calls(logic_ensure)
    start = _function(module_tree, "startSegmentation")
    assert "onOutput" in [a.arg for a in start.args.args]
    apply = _function(module_tree, "onApplyButton")
    keywords = {k.arg for node in ast.walk(apply) if isinstance(node, ast.Call) for k in node.keywords}
    assert "onOutput" in keywords
    assert "errorDisplay" not in _calls(_function(module_tree, "_pollJob"))  # the log holds the child's output


def test_job_is_cancelled_with_the_scene(module_tree):
    assert "cancel_job_with_scene" in _calls(_function(module_tree, "onApplyButton"))
    assert "IsNodePresent" in _calls(_function(module_tree, "_pollJob"))


def test_report_goes_to_the_case_folder(module_tree):
    calls = _calls(_function(module_tree, "onWriteReport"))
    assert "report_folder" in calls and "write_report" in calls


def test_deep_methods_are_installed_by_the_lib_with_one_consent(module_tree):
    """The module hands the install of a deep method to VertebralFractureLib.slicer.deep_install.ensure (the question,
    the steps, PyTorch through SlicerPyTorch's installTorch with the requirement of requirements/deep.txt: tested in
    test_deep_install.py) and starts no segmentation before it."""
    ensure_backend = _function(module_tree, "ensureBackend")
    assert {"ensure", "confirmOkCancelDisplay", "installed_summary"} <= _calls(ensure_backend)
    assert "ensureBackend" in _calls(_function(module_tree, "startSegmentation"))


def test_help_says_research_use_only_and_names_the_team(module_tree):
    from VertebralFractureLib.screening.rules import RESEARCH_USE

    text = MODULE.read_text(encoding="utf-8")
    assert RESEARCH_USE in text
    contributors = re.search(r"self\.parent\.contributors = \[(.*?)\]", text).group(1)
    assert "contributors" not in contributors.lower()


def test_example_ct_is_registered_with_sample_data(module_tree):
    """Slicer's SampleDataLogic.registerCustomSampleDataSource(category, sampleName, uris, fileNames, nodeNames,
    customDownloader, thumbnailFileName, loadFileTypes, loadFiles, loadFileProperties, checksums) at start-up, as
    Slicer's module template does: the pinned URL, its SHA-256 and a thumbnail that exists."""
    register = _function(module_tree, "registerSampleData")
    call = next(node for node in ast.walk(register) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "registerCustomSampleDataSource")
    keywords = {k.arg: k.value for k in call.keywords}
    assert {"category", "sampleName", "uris", "fileNames", "nodeNames", "checksums", "thumbnailFileName"} \
        <= set(keywords)
    assert ast.unparse(keywords["uris"]) == "EXAMPLE_CT_URL"
    assert "EXAMPLE_CT_SHA256" in ast.unparse(keywords["checksums"])
    thumbnail = REPOSITORY / "VertebralFracture" / "Resources" / "Icons" / "VertebralFractureExampleCT.png"
    assert thumbnail.read_bytes().startswith(b"\x89PNG")
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in MODULE.read_text(encoding="utf-8")
    module_cmake = (REPOSITORY / "VertebralFracture" / "CMakeLists.txt").read_text(encoding="utf-8")
    module_cmake = module_cmake.replace("${MODULE_NAME}", "VertebralFracture")
    assert "Resources/Icons/VertebralFractureExampleCT.png" in module_cmake


def test_every_lib_name_the_module_and_the_batch_script_use_exists():
    """The module and the batch script import the Lib inside functions (after the dependency check), where nothing
    fails until Slicer runs them: every ``from VertebralFractureLib... import NAME`` must resolve, and every
    ``NAME.attribute`` used on it in that function must exist (the package's folders moved once under them)."""
    import importlib

    for path in (MODULE, REPOSITORY / "VertebralFracture" / "Batch" / "VertebralFractureBatch.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
            imported = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("VertebralFractureLib"):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        if not hasattr(module, alias.name):
                            importlib.import_module(f"{node.module}.{alias.name}")  # a submodule
                        imported[alias.asname or alias.name] = getattr(module, alias.name)
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                    assert hasattr(imported[node.value.id], node.attr), \
                        f"{path.name}: {function.name} uses {node.value.id}.{node.attr}, which does not exist"
