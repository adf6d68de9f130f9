"""Every network a model's detection runs, exported as ONNX beside its weights (`maediff export-onnx`,
`maediff publish`), so that detection can run on ONNX Runtime without torch (runtime.py).

Each network is exported with torch's exporter (torch.export), its batch axis dynamic. Node metadata
(the exporter's Python stack traces, with the exporting machine's paths) is dropped: it is a tenth of
the file and says nothing to a runtime. After writing, ONNX Runtime runs each file on the example
inputs the method gives (``Method.graphs``); the card records the file's SHA-256, opset, input and
output names and the largest difference from torch, and refuses an export that differs by more
than ``PARITY_LIMIT``.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import CardError, OptionError
from ..files import atomic_path
from ..methods import method_of
from ..methods.graph import Call, Graph
from ..runtime import onnx_session
from .cards import rewrite_card
from .pairs import model_paths, sha256_of
from .store import load_model

OPSET = 18  # ONNX Runtime 1.14 (2023) and later run it
PARITY_LIMIT = 1e-3  # float32 graphs agree with torch to a few 1e-6; more means an operator was exported wrongly


def onnx_packages():
    """onnx and onnxruntime, or a clear error naming what to install (onnxscript is torch's need)."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError as err:
        raise OptionError(f"exporting to ONNX needs the onnx, onnxscript and onnxruntime packages ({err}): "
                          "pip install 'maediff-core[onnx]'") from None
    return onnx, onnxruntime


@contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_graph(graph: Graph, path: Path, opset: int = OPSET) -> None:
    """``graph`` written to ``path`` (atomically), its first axis dynamic, without node metadata."""
    onnx, _ = onnx_packages()
    batch = torch.export.Dim("batch", min=1)
    module = Call(graph.module.eval())  # every input by position, one shape rule for all
    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals (and on torchvision's operators)
        program = torch.onnx.export(module, tuple(graph.inputs.values()), dynamo=True,
                                    input_names=list(graph.inputs), output_names=list(graph.outputs),
                                    dynamic_shapes=[tuple({0: batch} for _ in graph.inputs)], opset_version=opset,
                                    verbose=False)
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def parity(graph: Graph, path: Path) -> float:
    """The largest |ONNX Runtime - torch| over ``graph``'s outputs on its example inputs."""
    with torch.no_grad():
        expected = graph.module.eval()(*graph.inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    found = onnx_session(path).run(list(graph.outputs), {k: v.numpy() for k, v in graph.inputs.items()})
    return max(float(np.abs(f - e.float().numpy()).max()) for f, e in zip(found, expected, strict=True))


def export_onnx(path: str | Path, opset: int = OPSET) -> list[Path]:
    """Every network of the model card at ``path`` as ``STEM.NAME.onnx``, each checked against torch,
    and the card rewritten to name them. Returns the files written."""
    model, card = load_model(path)
    method = method_of(card.config.method)
    graphs = method.graphs(card.config, model)
    if tuple(graphs) != method.graph_names:  # a card names exactly these (card.check_onnx)
        raise ValueError(f"{method.name}.graphs gives {', '.join(graphs)}; its graph_names say "
                         f"{', '.join(method.graph_names)}")
    stem = model_paths(path)[0].with_suffix("")
    entries, written = {}, []
    for name, graph in graphs.items():
        file = stem.with_name(f"{stem.name}.{name}.onnx")
        export_graph(graph, file, opset)
        difference = parity(graph, file)
        if not difference <= PARITY_LIMIT:
            raise CardError(f"{file}: ONNX Runtime differs from torch by {difference:.2g} on the {name}'s example "
                            f"inputs (limit {PARITY_LIMIT}); the export is wrong, not kept in the card")
        entries[name] = {"file": file.name, "sha256": sha256_of(file), "opset": opset, "inputs": list(graph.inputs),
                         "outputs": list(graph.outputs), "parity": difference}
        written.append(file)
    rewrite_card(replace(card, onnx=entries), path)
    return written

