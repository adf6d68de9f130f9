"""Running ``maediff detect`` in a separate Python process, polled without blocking.

Slicer must never freeze during a run of minutes: the process prints one JSON object per line
(``--progress json``), a reader thread queues them, and the GUI's timer calls :meth:`poll`.
Cancelling kills the whole process tree (the detector may start worker processes).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path


def core_root() -> Path:
    """Folder holding the ``maediff_core`` package: the repository root or, in an installed
    extension, the scripted-modules folder that holds the vendored copy."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here, here.parent):
        if (candidate / "maediff_core" / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError("maediff_core is not installed next to the MAEDiffAnomaly module")


def python_executable() -> str:
    """PythonSlicer inside Slicer (Slicer's Python without the GUI), this interpreter elsewhere."""
    launcher = shutil.which("PythonSlicer")
    return launcher or sys.executable


@dataclass
class DetectRequest:
    input_path: Path
    output_dir: Path
    model_path: Path | None = None
    device: str = "auto"
    mask_method: str | None = None
    mask_path: Path | None = None
    no_register: bool = False
    t_test: int | None = None
    stride: int | None = None
    threshold: float | None = None

    def command(self) -> list[str]:
        args = [python_executable(), "-m", "maediff_core.cli", "detect", str(self.input_path),
                "-o", str(self.output_dir), "--progress", "json", "--device", self.device]
        optional = {"--model": self.model_path, "--mask-method": self.mask_method, "--mask": self.mask_path,
                    "--t-test": self.t_test, "--stride": self.stride, "--threshold": self.threshold}
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        if self.no_register:
            args.append("--no-register")
        return args


@dataclass
class Progress:
    stage: str = "starting"
    fraction: float = 0.0
    message: str = ""
    events: list[tuple[str, float]] = field(default_factory=list)  # every (stage, fraction) seen
    log: list[str] = field(default_factory=list)  # lines that were not progress


class DetectionProcess:
    """One detection run in a child process."""

    def __init__(self, request: DetectRequest, env: dict[str, str] | None = None):
        self.request = request
        environment = {**os.environ, **(env or {})}
        root = str(core_root())
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        popen_extra = ({"start_new_session": True} if os.name == "posix"
                       else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP})
        self.process = subprocess.Popen(request.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        encoding="utf-8", errors="replace", env=environment, **popen_extra)
        self.lines: queue.Queue[str] = queue.Queue()
        self.progress = Progress()
        self.cancelled = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def poll(self) -> Progress:
        """Take the lines printed so far; progress lines update ``progress``, others go to its log."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.progress
            try:
                event = json.loads(line)
                self.progress.stage = event["stage"]
                self.progress.fraction = float(event["fraction"])
                self.progress.message = event.get("message", "")
                self.progress.events.append((self.progress.stage, self.progress.fraction))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                self.progress.log.append(line)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def finished(self) -> tuple[bool, str]:
        """(success, error text) once the process has ended and its output is read."""
        self.process.wait()
        self._reader.join(timeout=5)
        self.poll()
        if self.cancelled:
            return False, "cancelled"
        if self.process.returncode != 0:
            errors = [l for l in self.progress.log if "error" in l.lower()] or self.progress.log[-5:]
            return False, "\n".join(errors) or f"maediff detect exited with code {self.process.returncode}"
        return True, ""

    def cancel(self) -> None:
        """Kill the child and everything it started."""
        if not self.running:
            return
        self.cancelled = True
        if os.name == "posix":
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        self.process.wait()


def query_device(timeout: float = 120.0) -> dict:
    """What the core sees: torch version, CUDA GPU name and memory (``maediff device``)."""
    environment = {**os.environ, "PYTHONPATH": str(core_root())}
    done = subprocess.run([python_executable(), "-m", "maediff_core.cli", "device"], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env=environment)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["maediff device failed"])[-1]}
    return json.loads(done.stdout)
