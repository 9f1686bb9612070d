"""ONNX in: an ``.onnx`` file → ``nn.Module`` (onnx2torch) → the same FX IR as PyTorch models.

onnx2torch turns each ONNX node into a torch module; ``capture`` then traces through the
non-``torch.nn`` ones, so pruning sees plain ``torch.add``/``torch.mean`` calls. Before
conversion, ``Identity`` nodes that only alias an initializer (the legacy torch exporter emits
them for shared constants) become initializers, because onnx2torch expects conv weights and
biases to be initializers. The capture is checked against ONNX Runtime on the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from graphopt.errors import CaptureError

TOLERANCE = 1e-4  # max |graphopt - onnxruntime| / max |onnxruntime|
_DTYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 6: torch.int32, 7: torch.int64}


def read_onnx(path: str | Path):
    """The file's ModelProto (read once; conversion and example inputs share it)."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf and I/O errors
        raise CaptureError(f"{path}: not a readable ONNX file: {exc}") from exc


def to_module(proto, path: str | Path) -> nn.Module:
    """The model as a torch module (not yet captured); ``proto`` gains inlined aliases."""
    import onnx2torch

    _inline_constant_identities(proto)
    try:
        return onnx2torch.convert(proto).eval()
    except NotImplementedError as exc:
        raise CaptureError(
            f"{path}: onnx2torch cannot convert this file: {exc}",
            hint="re-export with an older opset (e.g. opset_version=17) or simplify the graph",
        ) from exc


def example_inputs_for(proto, path: str | Path, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs with the static shapes and dtypes the model declares."""
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if None in dims:
            raise CaptureError(
                f"{path}: input {value.name!r} has a dynamic shape {dims}; "
                "pass example_inputs to capture()"
            )
        dtype = _DTYPES.get(tensor.elem_type, torch.float32)
        inputs.append(torch.randn(dims, generator=generator).to(dtype))
    return tuple(inputs)


def check_against_onnxruntime(path: str | Path, gm: nn.Module, inputs) -> float:
    """Run the file in ONNX Runtime and the capture in torch; raise if they disagree."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    expected = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.no_grad():
        got = gm(*inputs)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    scale = max(float(np.abs(e).max()) for e in expected) or 1.0
    error = max(float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected, strict=True))
    if error / scale > TOLERANCE:
        raise CaptureError(
            f"{path}: the captured graph disagrees with ONNX Runtime on the file "
            f"(max abs error {error:.3g}, {error / scale:.3g} relative > {TOLERANCE})"
        )
    return error / scale


def _inline_constant_identities(proto) -> None:
    import onnx

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            alias = onnx.TensorProto()
            alias.CopyFrom(initializers[node.input[0]])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            initializers[alias.name] = alias
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
