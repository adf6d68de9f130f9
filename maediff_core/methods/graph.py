"""The networks a method's detection runs, as the runtimes call them and as onnx_export.py writes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Graph:
    """One network that detection runs, as it is exported (onnx_export.py): ``module`` takes
    ``inputs`` by position, in order (example tensors whose first axis is the batch), and returns
    ``outputs``, in order."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]


class Call(nn.Module):
    """``module.method(*positional, **keywords)`` with every argument passed by position, as an
    exported graph takes its inputs: the last ``len(keywords)`` are the named ones."""

    def __init__(self, module: nn.Module, method: str = "forward", keywords: tuple[str, ...] = ()):
        super().__init__()
        self.module, self.method, self.keywords = module, method, keywords

    def forward(self, *inputs: torch.Tensor):
        split = len(inputs) - len(self.keywords)
        call = self.module if self.method == "forward" else getattr(self.module, self.method)  # hooks run on forward
        return call(*inputs[:split], **dict(zip(self.keywords, inputs[split:], strict=True)))
