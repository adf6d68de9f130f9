"""The module as Slicer runs it, in a Python pinned to what a Slicer release bundles (the
Makefile's .venv-slicer-<release>: Slicer's numpy, SimpleITK, pydicom, Pillow, highdicom, plus
torch as the PyTorch extension installs it and exactly what the module's installer adds).

- sys.path: the built module folder (dist/MAEDiffAnomaly) and nothing of the repository, as
  Slicer's scripted-module factory gives a module; maediff_core is not installed in this Python.
- The detector starts as Slicer starts it: through a launcher standing in for PythonSlicer (which
  starts the real Python as its child), from Slicer's startup environment plus only what the
  module adds, in a working folder that is not the module's.
- The scene is the real MRML library of PyPI's slicer-core.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODULE = Path(os.environ["MAEDIFF_MODULE_DIR"]).resolve()
RELEASE = os.environ["MAEDIFF_SLICER_RELEASE"]
PINS = Path(__file__).with_name(f"slicer-{RELEASE}.txt")
sys.path.insert(0, str(MODULE))  # qSlicerScriptedLoadableModuleFactory: the module's folder only
sys.path.append(str(Path(__file__).resolve().parent.parent))  # test helpers (dicom_series), no code of ours

# Variables a Slicer session's startup environment does not carry to its children.
NOT_IN_STARTUP = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


@pytest.fixture(scope="session")
def python_slicer(tmp_path_factory) -> str:
    """A launcher named PythonSlicer: like Slicer's, it starts the real Python as its child and
    waits for it, so a caller holds the launcher, not the detector."""
    folder = tmp_path_factory.mktemp("slicer-bin")
    launcher = folder / "PythonSlicer"
    launcher.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    """``slicer.util.launchConsoleProcess(args, updateEnvironment=...)``: the startup environment
    plus the update, output merged as text, started from Slicer's working folder (not ours)."""
    cwd = tmp_path_factory.mktemp("slicer-cwd")
    startup = {k: v for k, v in os.environ.items() if k not in NOT_IN_STARTUP}

    def start(args, update):
        return subprocess.Popen([str(a) for a in args], env={**startup, **update}, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)

    return start


def wait_for(process, timeout_s: float = 1200.0):
    deadline = time.time() + timeout_s
    while process.running and time.time() < deadline:
        process.poll()
        time.sleep(0.2)
    return process.finished()
