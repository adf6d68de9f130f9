"""What the module needs in Slicer's Python beyond what Slicer ships, and how it is installed.

Detection runs on ONNX Runtime by default: the first Detect installs onnxruntime (17 to 28 MB to
download with what it needs that Slicer lacks, by platform: docs/slicer.md), from the module's
``wheels/`` folder when it has one (``make slicer-module-offline``: no network), else from PyPI.
torch is optional and comes from Slicer's PyTorch extension (the build that fits the user's GPU);
detection on it also needs MONAI, einops and safetensors. DICOM SEG export needs highdicom (asked
for at the first DICOM export). Every package already in Slicer's Python - numpy, SimpleITK,
pydicom, Pillow, torch, ... - is pinned to its installed version while installing, so pip can add
packages but never replace Slicer's own (PyPI's SimpleITK replaces Slicer's ITK-backed copy; a newer
pydicom breaks Slicer's DICOM module).

``Testing/test_slicer_dependencies.py`` checks these lists against the imports on the paths that run
in Slicer; ``python -m MAEDiffAnomalyLib.dependencies install onnx``, run from the module folder,
installs a group with the arguments the panel uses (into a Slicer's Python by hand, for instance).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

TORCH_REQUIREMENT = ">=2.1"  # torch.compile-era API used by the core; PyTorchUtils installs it
# import name -> pip requirement, per group. "onnx" and "torch" are also the runtimes' names.
GROUPS = {
    "onnx": {"onnxruntime": "onnxruntime>=1.17"},  # the first release with Python 3.12 wheels
    "torch": {"monai": "monai>=1.4", "einops": "einops>=0.7", "safetensors": "safetensors>=0.4"},
    "export": {"highdicom": "highdicom>=0.23"},  # Slicer 5.12 ships highdicom 0.27
}
# Packages whose own requirements are only what Slicer and PyTorch provide (monai: numpy, torch):
# installed without them, so pip cannot even consider replacing those.
NO_DEPS = {"monai"}
# Import names that Slicer's Python provides (the application, its bundled packages, the PyTorch
# extension); never installed by this module.
PROVIDED = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils", "DICOMLib", "numpy", "SimpleITK",
            "pydicom", "PIL", "torch"}
# Wheels an offline module carries (``make slicer-module-offline``): installs take them, never the network.
WHEELS = Path(__file__).resolve().parent.parent / "wheels"


def release(version: str) -> tuple[int, ...]:
    """``1.4.0rc1`` -> (1, 4, 0): enough to compare with a ``>=`` requirement."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def satisfied(requirement: str) -> bool:
    """An installed distribution at or above a ``name>=version`` requirement."""
    name, least = requirement.split(">=")
    try:
        return release(importlib.metadata.version(name)) >= release(least)
    except importlib.metadata.PackageNotFoundError:
        return False


def missing(group: str) -> list[str]:
    """Import names of ``group`` that this Python lacks, or has in a version too old (monai 1.3
    imports, but has none of the diffusion networks the core builds)."""
    return [name for name, requirement in GROUPS[group].items()
            if importlib.util.find_spec(name) is None or not satisfied(requirement)]


def dicom_seg_unavailable() -> str | None:
    """Why DICOM SEG cannot be written in this Python, or None. highdicom >= 0.23 needs pydicom >= 3;
    the last release for pydicom 2 (0.22) fails on numpy 2. Slicer 5.10 ships pydicom 2.4.4 with
    numpy 2.3, and its pydicom must not be replaced."""
    try:
        major = int(importlib.metadata.version("pydicom").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return "pydicom is not installed"
    if major < 3:
        return (f"DICOM SEG export needs pydicom 3 (Slicer 5.12 or newer); this Slicer has pydicom "
                f"{importlib.metadata.version('pydicom')}. Export the .seg.nrrd instead.")
    return None


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def runtime_for(choice: str, device: str) -> str:
    """The runtime a Detect click runs on: the user's choice, or for ``auto`` torch when the PyTorch
    extension's torch is installed or a GPU was asked for, else ONNX Runtime. (The detector refuses a
    model that cannot run on it, e.g. MAD-AD on ONNX Runtime, and says so.)"""
    if choice == "auto":
        choice = "torch" if device == "cuda" or torch_available() else "onnx"
    if choice not in ("onnx", "torch"):
        raise ValueError(f"the runtime is auto, onnx or torch, not {choice!r}")
    if choice == "onnx" and device == "cuda":
        raise ValueError("ONNX Runtime detects on the CPU: for the GPU choose Runtime 'torch' (the PyTorch "
                         "extension), or Device 'cpu'.")
    return choice


def installed_pins(upgraded: set[str] = frozenset()) -> list[str]:
    """``name==version`` for every distribution in this Python but the ``upgraded`` ones: the
    constraints of any install."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version and name.lower() not in upgraded:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def pip_arguments(group: str, names: list[str], wheels: Path | None = None) -> list[list[str]]:
    """Argument lists for ``python -m pip install`` (as ``slicer.util.pip_install`` runs it) that add
    ``names`` of ``group`` with every installed distribution held at its version; from ``wheels``
    (default: the module's ``WHEELS``) alone, with no index, when that folder exists."""
    wheels = WHEELS if wheels is None else wheels
    requirements = GROUPS[group]
    for name in names:
        if name in PROVIDED or name not in requirements:
            raise ValueError(f"{name} must not be installed by this module")
    constraints = Path(tempfile.mkdtemp(prefix="maediff-pip-")) / "constraints.txt"
    # A package of ours installed too old is upgraded; everything else stays as it is.
    constraints.write_text("\n".join(installed_pins({requirements[n].split(">=")[0].lower() for n in names})) + "\n")
    source = ["--no-index", "--find-links", str(wheels)] if wheels.is_dir() else []
    plain = [requirements[n] for n in names if n not in NO_DEPS]
    no_deps = [requirements[n] for n in names if n in NO_DEPS]
    commands = []
    if plain:
        commands.append([*plain, "-c", str(constraints), *source])
    if no_deps:
        commands.append([*no_deps, "--no-deps", "-c", str(constraints), *source])
    return commands


def main(argv: list[str]) -> int:
    """``install GROUP...``: what the module's installer runs, for building test environments."""
    import subprocess

    if len(argv) < 2 or argv[0] != "install" or not set(argv[1:]) <= set(GROUPS):
        print(f"usage: python -m MAEDiffAnomalyLib.dependencies install {{{','.join(GROUPS)}}}...", file=sys.stderr)
        return 2
    for group in argv[1:]:
        for arguments in pip_arguments(group, missing(group)):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *arguments], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
