"""The core's command line (``maediff detect``, ``maediff device``) and the module's package
installs (``python -m pip install``) in separate Python processes, polled without blocking.

Slicer must never freeze during a run of minutes: the child prints one line at a time (JSON
progress lines for ``detect``), a reader thread queues them, and the GUI's timer calls ``poll``.
How the child is started is the caller's: inside Slicer ``slicer.util.launchConsoleProcess``
(Slicer's startup environment, no console window on Windows) with ``PythonSlicer``; in tests a
plain ``subprocess.Popen``. Qt-free and Slicer-free, so that it runs the same in both.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# (arguments, variables to set on top of the starting environment) -> a process whose stdout
# carries its stdout and stderr, as text.
Launch = Callable[[list, dict], subprocess.Popen]

# Share of the whole run that each stage of ``maediff detect`` ends at (2-core CPU, demo case:
# preprocessing ~26 s, reconstruction ~104 s of ~140 s): one progress bar across all stages.
STAGE_END = {"starting": 0.0, "load": 0.02, "preprocess": 0.2, "reconstruct": 0.97, "postprocess": 0.99,
             "write": 1.0, "done": 1.0}
STAGE_NAMES = {"starting": "Starting", "load": "Reading the volume",
               "preprocess": "Registration, brain mask, bias field",
               "reconstruct": "Reconstructing a healthy brain", "postprocess": "Scores and lesions",
               "write": "Writing results", "done": "Done"}


def module_dir() -> Path:
    """The module's folder: ``MAEDiffAnomaly.py``, ``MAEDiffAnomalyLib/`` and the vendored ``maediff_core/``."""
    return Path(__file__).resolve().parent.parent


def child_environment() -> dict[str, str]:
    """What the child needs on top of the environment it starts from: the module folder, where the
    core is vendored, on its path, and unbuffered output so that progress arrives as it happens."""
    return {"PYTHONPATH": str(module_dir()), "PYTHONUNBUFFERED": "1"}


def plain_launch(args: list, update: dict) -> subprocess.Popen:
    """Outside Slicer: this process's environment plus ``update``."""
    return subprocess.Popen([str(a) for a in args], env={**os.environ, **update}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, errors="replace")


def core_command(python: str, *args) -> list[str]:
    return [python, "-m", "maediff_core.cli", *map(str, args)]


class CoreProcess:
    """One core command in a child process: its output lines, its end, cancelling it."""

    def __init__(self, args: list, launch: Launch = plain_launch):
        self.args = [str(a) for a in args]
        self.process = launch(self.args, child_environment())
        self.output: list[str] = []
        self.cancelled = False
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Bytes from under the text wrapper: Slicer's launchConsoleProcess decodes strictly in the system's
        # encoding, and one undecodable byte would lose the whole chunk read with it (progress included).
        stream = getattr(self.process.stdout, "buffer", self.process.stdout)
        while raw := stream.readline():
            line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            self._lines.put(line.rstrip("\r\n"))

    def poll(self) -> list[str]:
        """Lines printed since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                self.output += lines
                return lines

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> int:
        """Wait for the end and take its last lines (through ``poll``); returns the exit code."""
        code = self.process.wait()
        # A cancelled child may hold the pipe open for a moment after its launcher is gone (until
        # ``--stop-with-parent`` notices): its last lines are not worth a frozen panel.
        self._reader.join(timeout=0 if self.cancelled else 10)
        self.poll()
        return code

    def error_text(self, lines: list[str] | None = None) -> str:
        """The error lines of ``lines`` (default: all output), else its last lines."""
        lines = self.output if lines is None else lines
        errors = [line for line in lines if "error" in line.lower()] or lines[-5:]
        return "\n".join(errors) or f"{' '.join(self.args[2:4])} exited with code {self.process.returncode}"

    def cancel(self) -> None:
        """Stop the child. Through a launcher (PythonSlicer starts the real Python as its child)
        only the launcher is ours to kill: on Windows ``taskkill /T`` ends the whole tree; on POSIX
        the core exits by itself when its parent is gone (``--stop-with-parent``)."""
        if not self.running:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        else:
            self.process.kill()
        self.process.wait()


class InstallProcess:
    """``python -m pip install ...`` commands (``dependencies.pip_arguments``) one after another, each
    in a child as ``slicer.util.pip_install`` runs it, but polled: pip's lines are the log and the
    panel's status while Slicer stays responsive."""

    def __init__(self, python: str, arguments: list[list[str]], launch: Launch = plain_launch):
        self.commands = [[python, "-m", "pip", "install", "--progress-bar", "off", *a] for a in arguments]
        self.launch = launch
        self.log: list[str] = []
        self.error: str | None = None  # why it failed ("cancelled" when cancelled), once ended
        self.current: CoreProcess | None = CoreProcess(self.commands[0], launch)
        self.started = 1

    @property
    def running(self) -> bool:
        return self.current is not None

    def poll(self) -> list[str]:
        """pip's lines since the last call; starts the next command when one ends well."""
        if self.current is None:
            return []
        lines = self.current.poll()
        if not self.current.running:
            taken = len(self.current.output)
            code = self.current.wait()
            lines += self.current.output[taken:]
            if code != 0:
                self.error = self.current.error_text()
                self.current = None
            elif self.started < len(self.commands):
                self.current = CoreProcess(self.commands[self.started], self.launch)
                self.started += 1
            else:
                self.current = None
        self.log += lines
        return lines

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()
            self.current = None
            self.error = "cancelled"


@dataclass
class DetectRequest:
    input_path: Path
    output_dir: Path
    model_path: Path | None = None
    device: str = "auto"
    runtime: str = "auto"
    mask_method: str | None = None
    mask_path: Path | None = None
    no_register: bool = False
    # None: the model card's operating point (the core's defaults); set only what the user changed.
    t_test: int | None = None
    stride: int | None = None
    threshold: float | None = None
    operating_point: str | None = None
    scoring: str | None = None
    force: bool = False  # run on a contrast the model was not trained on

    def command(self, python: str) -> list[str]:
        args = core_command(python, "detect", self.input_path, "-o", self.output_dir, "--progress", "json",
                            "--device", self.device, "--runtime", self.runtime, "--stop-with-parent")
        optional = {"--model": self.model_path, "--mask-method": self.mask_method, "--mask": self.mask_path,
                    "--t-test": self.t_test, "--stride": self.stride, "--threshold": self.threshold,
                    "--operating-point": self.operating_point, "--scoring": self.scoring}
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        args += ["--no-register"] * self.no_register + ["--force"] * self.force
        return args


@dataclass
class Progress:
    stage: str = "starting"
    fraction: float = 0.0  # of the whole run
    message: str = ""
    events: list[tuple[str, float]] = field(default_factory=list)  # every (stage, fraction of the run)

    @property
    def text(self) -> str:
        return f"{STAGE_NAMES.get(self.stage, self.stage)} {self.message}".strip()


def overall_fraction(stage: str, fraction: float) -> float:
    """A stage's own fraction as a fraction of the whole run."""
    stages = list(STAGE_END)
    start = STAGE_END[stages[stages.index(stage) - 1]] if stage in stages and stage != stages[0] else 0.0
    end = STAGE_END.get(stage, start)
    return start + (end - start) * min(max(fraction, 0.0), 1.0)


class DetectionProcess(CoreProcess):
    """``maediff detect --progress json``: progress lines update ``progress``, others are the log."""

    def __init__(self, request: DetectRequest, python: str, launch: Launch = plain_launch):
        self.request = request
        self.progress = Progress()
        self.log: list[str] = []
        super().__init__(request.command(python), launch)

    def poll(self) -> list[str]:
        """Take the lines printed so far; returns the new log lines (those that are not progress)."""
        new_log = []
        for line in super().poll():
            try:
                event = json.loads(line)
                stage, fraction = event["stage"], float(event["fraction"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                new_log.append(line)
                continue
            self.progress.stage = stage
            self.progress.fraction = overall_fraction(stage, fraction)
            self.progress.message = event.get("message", "")
            self.progress.events.append((stage, self.progress.fraction))
        self.log += new_log
        return new_log

    def finished(self) -> tuple[bool, str]:
        """(success, error text) once the process has ended."""
        code = self.wait()
        if self.cancelled:
            return False, "cancelled"
        if code != 0:
            return False, self.error_text(self.log)
        return True, ""

    @property
    def result_dir(self) -> Path:
        """Where ``maediff detect`` writes this input's results (one folder per input, named by its file)."""
        from maediff_core.files import case_name

        return Path(self.request.output_dir) / case_name(self.request.input_path)


def input_summary(spacing, input_check: dict | None = None) -> str:
    """One line for the panel about the input: its voxel size and, after a run, the tissue contrast the
    core measured (``input_check`` of lesions.json)."""
    text = "Voxels " + " x ".join(f"{v:.3g}" for v in spacing) + " mm"
    contrast = (input_check or {}).get("contrast")
    if contrast:
        text += ("; contrast checked: CSF-WM {csf_wm:.2f}, GM-WM {gm_wm:.2f}, CSF-GM {csf_gm:.2f} (T2: CSF brightest,"
                 " white matter darkest)").format(**contrast)
    return text


def refusal(error: str) -> str:
    """The reason of a failed run for the panel: the core's first error line, its command-line advice in
    the panel's words."""
    lines = error.splitlines() or ["no reason given"]
    reason = next((line.split(": error: ", 1)[1] for line in lines if ": error: " in line), lines[0])
    reason = reason.replace("(--force runs it anyway)", "(Advanced > 'Run even if the contrast is not T2' runs it"
                                                        " anyway)")
    if "detects on torch only" in reason:
        reason += ". Choose Runtime 'torch' (with the PyTorch extension installed)."
    return reason


RUNTIME_NAMES = {"onnx": "ONNX Runtime", "torch": "PyTorch"}


def ran_on(record: dict) -> str:
    """What ran a detection, from its lesions.json: "ONNX Runtime on the CPU", "PyTorch on cuda"."""
    device = str(record.get("device", "")).split(" (")[0]
    device = {"cpu": "the CPU", "cuda": "the GPU", "": "an unknown device"}.get(device, device)
    return f"{RUNTIME_NAMES.get(record.get('runtime'), record.get('runtime', '?'))} on {device}"


def device_summary(output: list[str]) -> str:
    """One line for the panel from the JSON of ``maediff device``."""
    try:
        info = json.loads(output[-1])
    except (IndexError, json.JSONDecodeError):
        return "Could not query the device: " + ("\n".join(output[-3:]) or "no output")
    onnx = (f"ONNX Runtime {info['onnxruntime']}" if info.get("onnxruntime")
            else "ONNX Runtime not installed yet (the first Detect installs it)")
    if info.get("cuda"):
        return f"GPU: {info['name']} ({info['memory_gb']} GB), PyTorch {info['torch']}; {onnx} (CPU)"
    torch = (f"PyTorch {info['torch']} sees no CUDA GPU" if info.get("torch")
             else "no PyTorch (the PyTorch extension adds it, for a GPU)")
    return f"CPU: {onnx}; {torch}. Detection takes minutes per volume on the CPU."
