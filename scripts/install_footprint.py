"""What the first Detect costs a Slicer user to install, measured: megabytes downloaded and on disk
for detection on ONNX Runtime (the module's default) and on the PyTorch extension's torch, for
Slicer's Python 3.12 on each platform Slicer is released for.

pip resolves each path as Slicer would (``--dry-run``, Slicer 5.12's bundled packages held at their
versions and not counted); each wheel's download size is read from the package index (HTTP HEAD),
and its size on disk from its own zip directory (HTTP range requests: a few kilobytes per wheel,
not the gigabytes of a CUDA build). The torch path is what PyTorchUtils installs (torch and
torchvision) plus what the module adds beside it (MAEDiffAnomalyLib/dependencies.py, group "torch").
PyPI's Linux torch is its CUDA build; its Windows and macOS torch are CPU builds. pip evaluates
environment markers for the system it runs on, not for ``--platform``, and torch's requirements hold
Linux-only CUDA libraries: for another system than this one the torch row counts the wheels of the
packages named (``--no-deps``; torch's pure-Python requirements, about 15 MB, left out) and is
marked ``*``.

Usage: python scripts/install_footprint.py [--platform TAG ...]   (standard library and pip; network)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MAEDiffAnomaly"))
sys.path.insert(0, str(ROOT / "scripts"))
from build_slicer_module import SLICER_PLATFORMS, SLICER_PYTHON  # noqa: E402

from MAEDiffAnomalyLib.dependencies import GROUPS  # noqa: E402

PATHS = {"onnx": list(GROUPS["onnx"].values()),
         "torch": ["torch", "torchvision", *GROUPS["torch"].values()]}  # PyTorchUtils: torch + torchvision
# pip matches one platform tag exactly: a Linux wheel may be tagged for an older manylinux.
PLATFORM_FAMILY = {"manylinux_2_28_x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")}
SLICER_PINS = ROOT / "Testing" / "slicer_env" / "slicer-5.12.txt"


class RemoteFile:
    """A file behind a URL, read with HTTP range requests: enough of one for ``zipfile`` to list it."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.position = url, size, 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.size + offset}[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, count: int = -1) -> bytes:
        end = self.size if count < 0 else min(self.size, self.position + count)
        if end <= self.position:
            return b""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.position}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        self.position += len(data)
        return data

    def seekable(self) -> bool:
        return True


def sizes(url: str) -> tuple[int, int]:
    """(bytes downloaded, bytes unpacked) of the wheel at ``url``."""
    if url.startswith("file://"):
        path = urllib.request.url2pathname(url[len("file://"):])
        with zipfile.ZipFile(path) as wheel:
            return os.path.getsize(path), sum(entry.file_size for entry in wheel.infolist())
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
        size = int(response.headers["Content-Length"])
    with zipfile.ZipFile(RemoteFile(url, size)) as wheel:
        return size, sum(entry.file_size for entry in wheel.infolist())


def resolve(requirements: list[str], platform: str, slicer: set[str], no_deps: bool) -> list[tuple[str, str]]:
    """(name==version, url) of what pip would add to Slicer's Python on ``platform``."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        platforms = [arg for tag in PLATFORM_FAMILY.get(platform, (platform,)) for arg in ("--platform", tag)]
        # The index only: no local configuration, find-links or caps of the machine measuring.
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
        environment["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--target", str(Path(folder) / "target"), "--report", str(report), "--only-binary=:all:",
                        "--python-version", SLICER_PYTHON, "--implementation", "cp",
                        "--abi", f"cp{SLICER_PYTHON.replace('.', '')}", *platforms, *requirements,
                        *["--no-deps"] * no_deps],
                       check=True, env=environment)
        installs = json.loads(report.read_text())["install"]
    return [(f"{i['metadata']['name']}=={i['metadata']['version']}", i["download_info"]["url"]) for i in installs
            if i["metadata"]["name"].lower() not in slicer]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append",
                        help=f"pip platform tags (default: {', '.join(SLICER_PLATFORMS)})")
    platforms = parser.parse_args().platform or list(SLICER_PLATFORMS)
    slicer = {line.split("==")[0].strip().lower() for line in SLICER_PINS.read_text().splitlines()
              if "==" in line.split("#")[0]}
    print(f"{'platform':24} {'path':6} {'packages':>8} {'download MB':>12} {'on disk MB':>11}  largest")
    here = sys.platform  # "linux", "win32", "darwin"
    for platform in platforms:
        for path, requirements in PATHS.items():
            named_only = path == "torch" and not platform.startswith({"linux": "manylinux", "win32": "win",
                                                                      "darwin": "macosx"}.get(here, here))
            wheels = [(name, *sizes(url)) for name, url in resolve(requirements, platform, slicer, named_only)]
            wheels.sort(key=lambda wheel: -wheel[1])
            largest = ", ".join(f"{name} {download / 1e6:.0f}" for name, download, _ in wheels[:3])
            print(f"{platform:24} {path + '*' * named_only:6} {len(wheels):8d} {sum(w[1] for w in wheels) / 1e6:12.1f} "
                  f"{sum(w[2] for w in wheels) / 1e6:11.1f}  {largest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
