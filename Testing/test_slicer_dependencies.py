"""The module's install lists, checked against what the code that runs in Slicer imports.

Two paths run there: Slicer's own process (the module, its Lib, and the parts of the core they
import: scene building, the threshold slider, export) and the detector process (``maediff
detect`` and ``maediff device``). Every third-party import on them must be something Slicer or
the PyTorch extension provides, or in the module's installer; heavy research-only packages must
stay off them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from MAEDiffAnomalyLib import dependencies

ROOT = Path(__file__).resolve().parent.parent
# The CLI's modules hold every command (its options in add_*, its handler in run_*); the detector
# runs only these handlers, and the functions every command runs.
CLI_FUNCTIONS_RUN = {"main", "build_parser", "crash_log", "run_detect", "run_device", "exit_when_orphaned"}
OWN = {"maediff_core", "MAEDiffAnomalyLib", "MAEDiffAnomaly"}


def source_of(module: str) -> Path | None:
    parts = module.split(".")
    base = ROOT / "MAEDiffAnomaly" if parts[0] in ("MAEDiffAnomalyLib", "MAEDiffAnomaly") else ROOT
    for path in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def runs(module: str, statement: ast.stmt) -> bool:
    """Whether the detector runs ``statement`` of ``module``: all but the CLI's other handlers."""
    return not (module.startswith("maediff_core.cli") and isinstance(statement, ast.FunctionDef)
                and not statement.name.startswith("add_") and statement.name not in CLI_FUNCTIONS_RUN)


def registered_folders(tree: ast.Module, module: str) -> set[str]:
    """The method folders the registry imports by name (methods/__init__.py, FOLDERS)."""
    return {f"{module}.{element.value}" for statement in tree.body if isinstance(statement, ast.Assign)
            and any(getattr(target, "id", None) == "FOLDERS" for target in statement.targets)
            for element in statement.value.elts}


def imports_of(module: str) -> set[str]:
    """Absolute names ``module`` imports: at module level and in its functions (for the CLI, only
    the functions the detector runs)."""
    source = source_of(module)
    tree = ast.parse(source.read_text())
    is_package = source.name == "__init__.py"
    package = module if is_package else (module.rsplit(".", 1)[0] if "." in module else module)
    nodes = [node for statement in tree.body if runs(module, statement) for node in ast.walk(statement)]
    found = registered_folders(tree, module)
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = (f"{anchor}.{node.module}" if node.module else anchor) if node.level else node.module
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if source_of(f"{base}.{alias.name}")}
    return found


def third_party_closure(*starts: str) -> set[str]:
    """Top-level names of the third-party packages imported, transitively through our own code."""
    seen, todo, third = set(), list(starts), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in imports_of(module):
            top = name.split(".")[0]
            if top in OWN:
                if source_of(name) and name not in seen:
                    todo.append(name)
            elif top not in sys.stdlib_module_names:
                third.add(top)
    return third


def test_the_walk_follows_relative_imports_and_the_method_registry():
    assert {"maediff_core.methods.cddpm", "maediff_core.methods.madad"} <= imports_of("maediff_core.methods")
    assert "maediff_core.methods.base" in imports_of("maediff_core.methods.madad")
    assert "maediff_core.networks" in imports_of("maediff_core.methods.patch.mae")
    assert "maediff_core.cli.detect" in imports_of("maediff_core.cli")


def test_the_detector_needs_only_slicer_and_the_runtime_installs():
    needed = third_party_closure("maediff_core.cli.__main__")
    allowed = dependencies.PROVIDED | set(dependencies.GROUPS["onnx"]) | set(dependencies.GROUPS["torch"])
    assert needed <= allowed, f"not installed inside Slicer: {sorted(needed - allowed)}"
    # The walk does see both runtimes' paths (that the ONNX one runs without the torch group is
    # test_methods.py's detect_without_torch, and Testing/slicer_env's fresh Slicer 5.12).
    assert {"torch", "monai", "safetensors", "onnxruntime", "SimpleITK", "numpy"} <= needed


def test_slicers_process_needs_no_torch_and_installs_export_needs_itself():
    needed = third_party_closure("MAEDiffAnomaly", "MAEDiffAnomalyLib.scene", "MAEDiffAnomalyLib.runner",
                                 "MAEDiffAnomalyLib.model_card", "MAEDiffAnomalyLib.dependencies")
    allowed = dependencies.PROVIDED | set(dependencies.GROUPS["export"])
    assert needed <= allowed, f"not available in Slicer's process: {sorted(needed - allowed)}"
    assert "torch" not in needed  # the panel loads, and shows results, before torch is installed
    assert {"highdicom", "pydicom", "SimpleITK", "slicer"} <= needed


def test_research_only_packages_stay_off_both_paths():
    on_paths = third_party_closure("maediff_core.cli.__main__", "MAEDiffAnomaly")
    assert not {"tqdm", "tensorboard", "matplotlib", "sklearn"} & on_paths


def test_installs_never_replace_what_slicer_ships():
    for forbidden in ("SimpleITK", "numpy", "torch", "pydicom"):
        try:
            dependencies.pip_arguments("torch", [forbidden])
        except ValueError as error:
            assert "must not be installed" in str(error)
        else:
            raise AssertionError(f"{forbidden} would be installed")
    commands = dependencies.pip_arguments("torch", ["einops", "monai"])
    assert any("--no-deps" in command and "monai>=1.4" in command for command in commands)
    constraints = Path(commands[0][commands[0].index("-c") + 1]).read_text().splitlines()
    import importlib.metadata

    for name in ("numpy", "SimpleITK", "torch", "pydicom"):
        assert f"{importlib.metadata.metadata(name)['Name']}=={importlib.metadata.version(name)}" in constraints


def test_a_package_installed_too_old_counts_as_missing_and_is_upgraded(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.3.2" if name == "monai" else real(name))
    assert "monai" in dependencies.missing("torch")  # it imports, but lacks DiffusionModelUNet
    assert dependencies.release("1.4.0rc1") == (1, 4, 0) and dependencies.satisfied("monai>=1.3")
    command = dependencies.pip_arguments("torch", ["monai"])[0]
    pins = Path(command[command.index("-c") + 1]).read_text().lower().splitlines()
    assert not any(pin.startswith("monai==") for pin in pins) and any(pin.startswith("numpy==") for pin in pins)


# What each release's tag builds, read in Slicer's repository (SuperBuild/External_*.cmake at v5.10.0
# and at the 5.12 release tags); the Slicer-like test Pythons must hold exactly these.
RELEASE_TAGS = {"5.10": {"numpy": "2.0.2", "SimpleITK": "2.5.2", "pydicom": "2.4.4", "pillow": "11.2.1"},
                "5.12": {"SimpleITK": "2.5.5", "pydicom": "3.0.2", "highdicom": "0.27.0"}}


def test_the_slicer_pythons_pin_what_each_release_builds_and_say_where_from():
    for release, built in RELEASE_TAGS.items():
        pins = {}
        for line in (ROOT / "Testing" / "slicer_env" / f"slicer-{release}.txt").read_text().splitlines():
            pin, _, source = line.partition("#")
            if pin.strip():
                assert "SuperBuild/" in source, f"{release}: {line} names no source"
                name, version = pin.strip().split("==")
                pins[name] = version
        assert {name: pins.get(name) for name in built} == built, release


def test_installs_take_the_modules_wheels_alone_when_it_carries_them(tmp_path):
    online = dependencies.pip_arguments("onnx", ["onnxruntime"], wheels=tmp_path / "absent")
    assert online == [["onnxruntime>=1.17", "-c", online[0][2]]]
    (tmp_path / "wheels").mkdir()
    offline = dependencies.pip_arguments("onnx", ["onnxruntime"], wheels=tmp_path / "wheels")[0]
    assert offline[-3:] == ["--no-index", "--find-links", str(tmp_path / "wheels")]


def test_auto_takes_torch_where_the_pytorch_extension_is():
    """Here torch is installed, as the PyTorch extension installs it; a Slicer without it takes ONNX
    Runtime (Testing/slicer_env, where torch is absent)."""
    assert dependencies.torch_available()
    assert dependencies.runtime_for("auto", "auto") == "torch"
    assert dependencies.runtime_for("auto", "cuda") == "torch"  # a GPU is torch's
    assert dependencies.runtime_for("onnx", "cpu") == "onnx" and dependencies.runtime_for("torch", "cpu") == "torch"
    refusals = (("onnx", "cuda", "ONNX Runtime detects on the CPU"), ("tflite", "cpu", "not 'tflite'"))
    for choice, device, says in refusals:
        try:
            dependencies.runtime_for(choice, device)
        except ValueError as error:
            assert says in str(error)
        else:
            raise AssertionError(f"{choice} on {device} was accepted")
