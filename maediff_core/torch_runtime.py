"""Detection's networks in torch, on the CPU or CUDA (the other runtime: runtime.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .device import in_batches, pick_device
from .methods import method_of
from .modelfile import ModelCard, load_model
from .runtime import CPU_BATCH, Runtime

GPU_BATCH = 512  # halved on out-of-memory (device.in_batches)


class TorchRuntime(Runtime):
    """``network`` (the card's, its weights loaded) on ``device``: each of the method's graphs
    (``Method.graphs``) called with its inputs in the order the export takes them, in bfloat16 on
    CUDA. The noise is the base class's numpy fields, as on ONNX Runtime: a seed gives the same
    reconstructions on either runtime and any device, to the precision each computes in."""

    name = "torch"

    def __init__(self, network: torch.nn.Module, card: ModelCard, device: torch.device | str = "cpu"):
        self.network, self.torch_device = network, torch.device(device)
        self.device = str(self.torch_device)
        self.batch = GPU_BATCH if self.torch_device.type == "cuda" else CPU_BATCH
        self.graphs = method_of(card.config.method).graphs(card.config, network)

    @torch.no_grad()
    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        spec = self.graphs[graph]
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.torch_device) for name in spec.inputs]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.torch_device.type == "cuda"):
            outputs = spec.module(*tensors)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [output.float().cpu().numpy() for output in outputs]

    def batches(self, count: int, batch: int, run: Callable[[int, int], None], done: Callable[[int, int], None]):
        in_batches(count, batch, run, done)


def load_torch_runtime(path: str | Path, device: str = "auto") -> tuple[TorchRuntime, ModelCard]:
    torch_device = pick_device(device)
    # The contiguous layout: channels_last is 12 % faster on the CPU but 1.5e-5 from float64 (contiguous:
    # 4e-7), which the Mahalanobis scoring enlarges to 2.4e-4 between the runtimes (docs/detection-speed.md).
    network, card = load_model(path, torch_device)
    return TorchRuntime(network, card, torch_device), card
