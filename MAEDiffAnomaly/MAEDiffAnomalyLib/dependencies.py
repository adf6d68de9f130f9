"""What the module needs in Slicer's Python beyond what Slicer ships, and how it is installed.

torch comes from Slicer's PyTorch extension (the build that fits the user's GPU, or the CPU);
the rest from pip after the user agreed, in two groups: what detection imports (asked for at the
first Detect) and what DICOM SEG export imports (asked for at the first DICOM export). Every
package already in Slicer's Python - numpy, SimpleITK, pydicom, Pillow, torch, ... - is pinned to
its installed version while installing, so pip can add packages but never replace Slicer's own
(PyPI's SimpleITK replaces Slicer's ITK-backed copy; a newer pydicom breaks Slicer's DICOM module).

``Testing/test_slicer_dependencies.py`` checks these lists against the imports on the paths that run
in Slicer; ``python -m MAEDiffAnomalyLib.dependencies install detect`` installs a group the way
the module does (the Slicer-environment tests are built with it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

TORCH_REQUIREMENT = ">=2.1"  # torch.compile-era API used by the core; PyTorchUtils installs it
# import name -> pip requirement, per group.
GROUPS = {
    "detect": {"monai": "monai>=1.4", "einops": "einops>=0.7", "safetensors": "safetensors>=0.4"},
    "export": {"highdicom": "highdicom>=0.23"},  # Slicer 5.12 ships highdicom 0.27
}
# Packages whose own requirements are only what Slicer and PyTorch provide (monai: numpy, torch):
# installed without them, so pip cannot even consider replacing those.
NO_DEPS = {"monai"}
# Import names that Slicer's Python provides (the application, its bundled packages, the PyTorch
# extension); never installed by this module.
PROVIDED = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils", "DICOMLib", "numpy", "SimpleITK",
            "pydicom", "PIL", "torch"}


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


def installed_pins(upgraded: set[str] = frozenset()) -> list[str]:
    """``name==version`` for every distribution in this Python but the ``upgraded`` ones: the
    constraints of any install."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version and name.lower() not in upgraded:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def pip_arguments(group: str, names: list[str]) -> list[list[str]]:
    """Argument lists for ``slicer.util.pip_install`` (``python -m pip install ...``) that add
    ``names`` of ``group`` with every installed distribution held at its version."""
    requirements = GROUPS[group]
    for name in names:
        if name in PROVIDED or name not in requirements:
            raise ValueError(f"{name} must not be installed by this module")
    constraints = Path(tempfile.mkdtemp(prefix="maediff-pip-")) / "constraints.txt"
    # A package of ours installed too old is upgraded; everything else stays as it is.
    constraints.write_text("\n".join(installed_pins({requirements[n].split(">=")[0].lower() for n in names})) + "\n")
    plain = [requirements[n] for n in names if n not in NO_DEPS]
    no_deps = [requirements[n] for n in names if n in NO_DEPS]
    commands = []
    if plain:
        commands.append([*plain, "-c", str(constraints)])
    if no_deps:
        commands.append([*no_deps, "--no-deps", "-c", str(constraints)])
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
