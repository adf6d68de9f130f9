"""Where a model's networks run in detection: torch (torch_runtime.py; CPU or CUDA) or ONNX Runtime
(the files `maediff export-onnx` writes; CPU). A method's reconstruction asks its runtime for the
noise and for each forward pass (``run``), with numpy arrays in and out, and never asks which runtime
it holds; detection on ONNX Runtime imports neither torch nor MONAI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import CardError, OptionError
from .modelfile.card import ModelCard
from .modelfile.cards import load_card
from .noise import numpy_noise

RUNTIMES = ("torch", "onnx")
# Patches per forward pass on CPU. Small batches stay in cache: maediff-small on 2 cores takes 70-80 ms
# per patch at 4-8 against 110-115 ms at 16-32, and the demo case reconstructs in 53-59 s at 8 against 96 s
# at 32 (`maediff bench-detect`).
CPU_BATCH = 8


def in_batches(count: int, batch: int, run: Callable[[int, int], None], done: Callable[[int, int], None],
               out_of_memory: tuple[type[BaseException], ...] = (), release: Callable[[], None] = lambda: None,
               ) -> None:
    """``run(begin, end)`` over ``count`` jobs, ``batch`` at a time, then ``done(jobs done, batch)``; an
    ``out_of_memory`` error halves the batch, calls ``release`` and runs that part again (``run`` must
    change nothing before its forward pass succeeds)."""
    begin = 0
    while begin < count:
        end = min(count, begin + batch)
        try:
            run(begin, end)
        except out_of_memory:
            if batch == 1:
                raise OptionError("out of GPU memory even for a batch of one: use --device cpu") from None
            batch = max(1, batch // 2)
            release()
            continue
        begin = end
        done(begin, batch)


class Runtime:
    """A model's networks (``card.onnx`` names them; ``Method.graphs`` builds them), run on numpy arrays."""

    name: str
    device: str  # what lesions.json says it ran on
    batch: int = CPU_BATCH  # patches per forward pass unless told

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of network ``graph`` on ``inputs`` (by the names the card lists), in float32."""
        raise NotImplementedError

    def noise(self, kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
        """Diffusion noise of ``shape`` from ``seed``, the same fields on every runtime: whether torch
        or ONNX Runtime runs the networks never changes which lesions a seed finds."""
        return numpy_noise(kind, shape, seed)

    def batches(self, count: int, batch: int, run: Callable[[int, int], None], done: Callable[[int, int], None]):
        in_batches(count, batch, run, done)


class OnnxRuntime(Runtime):
    """The card's ONNX files on ONNX Runtime's CPU provider, each verified against its hash."""

    name = "onnx"
    device = "cpu (ONNX Runtime)"

    def __init__(self, card: ModelCard, threads: int = 0):
        self.sessions = {name: onnx_session(path, threads) for name, path in exported(card).items()}

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, inputs)


def exported(card: ModelCard) -> dict[str, Path]:
    """The card's exported networks, each verified against its hash; a card without them is refused."""
    if not card.onnx:
        raise CardError(f"model {card.config.name!r} has no ONNX export: `maediff export-onnx` on its card writes it")
    return {name: card.onnx_path(name) for name in card.onnx}


def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime session of ``path`` on the CPU (``threads`` 0: as many as cores)."""
    try:
        import onnxruntime
    except ImportError:
        raise OptionError("--runtime onnx needs the onnxruntime package: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def has_torch() -> bool:
    """torch imports (a broken install, e.g. a CUDA build without its libraries, counts as none)."""
    try:
        import torch  # noqa: F401 - ``auto`` runs on it when it imports
    except ImportError:
        return False
    return True


def card_runtimes(card: ModelCard) -> tuple[str, ...]:
    """Where ``card``'s model can detect: its method's runtimes, ONNX Runtime only with its exported files."""
    from .methods import method_of

    return tuple(r for r in method_of(card.config.method).runtimes if r != "onnx" or card.onnx)


def pick_runtime(name: str, card: ModelCard) -> str:
    """``auto``: torch where it imports, else ONNX Runtime; a model that runs on one runtime only, on it."""
    runtimes = card_runtimes(card)
    if name == "auto":
        name = "torch" if has_torch() or "onnx" not in runtimes else "onnx"
    if name not in RUNTIMES:
        raise OptionError(f"the runtime is one of auto, {', '.join(RUNTIMES)}; got {name!r}")
    if name not in runtimes:
        raise OptionError(f"model {card.config.name!r} ({card.config.method}) detects on {' or '.join(runtimes)} "
                          f"only, not {name}" + ("" if card.onnx else "; `maediff export-onnx` on its card adds ONNX"))
    return name


def load_runtime(path: str | Path, runtime: str = "auto", device: str = "auto") -> tuple[Runtime, ModelCard]:
    """The model at ``path`` on ``runtime`` (auto, torch or onnx); ``device`` is torch's."""
    card = load_card(path)
    if pick_runtime(runtime, card) == "onnx":
        if device not in ("auto", "cpu"):
            raise OptionError(f"ONNX Runtime detection runs on the CPU: --device {device} needs --runtime torch")
        return OnnxRuntime(card), card
    from .torch_runtime import load_torch_runtime

    return load_torch_runtime(path, device)
