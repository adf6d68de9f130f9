"""The module as Slicer runs it, in a Python pinned to what a Slicer release bundles (the
Makefile's .venv-slicer-<release>: Slicer's numpy, SimpleITK, pydicom, Pillow, highdicom), as a
fresh Slicer without the PyTorch extension has it.

- The first Detect installs ONNX Runtime from the module's wheels/ folder, with every package index
  unreachable, and detects on it; torch and MONAI are not installed, and blocked from import
  (without-torch.pth, which the Makefile puts in the Python's site-packages).

- sys.path: the module folder unpacked from dist/MAEDiffAnomaly.zip and nothing of the repository, as
  Slicer's scripted-module factory gives a module; maediff_core is not installed in this Python.
- The module is driven through its panel (slicer_standins.py: Qt, the .ui loader and the
  parameter-node binding are stand-ins); the detector starts as Slicer starts it, through Slicer's
  own launchConsoleProcess from the startup environment and a launcher standing in for
  PythonSlicer (which starts the real Python as its child).
- The scene is the real MRML library of PyPI's slicer-core.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODULE = Path(os.environ["MAEDIFF_MODULE_DIR"]).resolve()
RELEASE = os.environ["MAEDIFF_SLICER_RELEASE"]
PINS = Path(__file__).with_name(f"slicer-{RELEASE}.txt")
# What the first Detect installs in a fresh Slicer (the wheels the module carries), removed before
# each run of the tests so that every run installs it again.
FIRST_DETECT_INSTALLS = ("onnxruntime", "flatbuffers", "protobuf")
sys.path.insert(0, str(MODULE))  # qSlicerScriptedLoadableModuleFactory: the module's folder only
sys.path.append(str(Path(__file__).resolve().parent.parent))  # test helpers (stand-ins, DICOM), no module code


@pytest.fixture(autouse=True)
def no_error_swallowed_by_a_slot():
    """PythonQt prints an error a slot raises and goes on; here it fails the test (or the fixture's
    first test) that caused it. A test that expects one takes it with raised_in_slots()."""
    import slicer_standins

    yield
    assert not slicer_standins.UNCAUGHT, f"a slot raised: {slicer_standins.UNCAUGHT!r}"


@pytest.fixture(scope="session")
def python_slicer(tmp_path_factory) -> str:
    """PythonSlicer on the PATH: a launcher that starts the real Python as its child."""
    import slicer_standins

    return slicer_standins.python_slicer(tmp_path_factory.mktemp("slicer-bin"))


@pytest.fixture(scope="session")
def fresh_slicer() -> None:
    """Slicer as a hospital without internet has it: nothing the module installs is there yet, and
    the children the panel starts reach no package index (no pip configuration, an index that refuses
    connections)."""
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *FIRST_DETECT_INSTALLS],
                   check=True, capture_output=True)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        del os.environ[key]
    os.environ.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
                      PIP_TIMEOUT="5")
