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

from graphopt.errors import CaptureError, first_line

TOLERANCE = 1e-4  # max |graphopt - onnxruntime| / max |onnxruntime|
# ONNX TensorProto element types → torch dtypes.
_DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


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
    except Exception as exc:  # noqa: BLE001 - a malformed graph fails anywhere in onnx2torch
        raise CaptureError(
            f"{path}: onnx2torch cannot convert this file: {type(exc).__name__}: {exc}"
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
        if tensor.elem_type not in _DTYPES:
            raise CaptureError(f"{path}: input {value.name!r} has an unsupported element type")
        inputs.append(_random(dims, _DTYPES[tensor.elem_type], generator))
    return tuple(inputs)


def _random(shape: list[int], dtype: torch.dtype, generator) -> torch.Tensor:
    """Normal floats; integers and booleans in {0, 1} (safe as ids, masks and indices)."""
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 2, shape, generator=generator).to(dtype)


def check_against_onnxruntime(path: str | Path, gm: nn.Module, inputs) -> float:
    """Run the file in ONNX Runtime and the capture in torch; raise if they disagree."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        raise CaptureError(f"{path}: ONNX Runtime cannot load the file: {first_line(exc)}") from exc
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise CaptureError(f"{path}: the file takes {len(names)} inputs, got {len(inputs)}")
    feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs, strict=True)}
    try:
        expected = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - InvalidArgument, Fail, ... are not exported types
        given = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in feeds.items())
        raise CaptureError(
            f"{path}: ONNX Runtime rejects the example inputs ({given}): {first_line(exc)}"
        ) from exc
    with torch.no_grad():
        got = gm(*inputs)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    if len(got) != len(expected):
        raise CaptureError(
            f"{path}: the captured graph returns {len(got)} outputs, the file {len(expected)}"
        )
    scale = max((_finite_max(e) for e in expected), default=0.0) or 1.0
    error = max(_difference(g.numpy(), e) for g, e in zip(got, expected, strict=True))
    if not error / scale <= TOLERANCE:
        raise CaptureError(
            f"{path}: the captured graph disagrees with ONNX Runtime on the file "
            f"(max abs error {error:.3g}, {error / scale:.3g} relative > {TOLERANCE})"
        )
    return error / scale


def _finite_max(a: np.ndarray) -> float:
    finite = np.abs(a[np.isfinite(a)]) if a.size else a
    return float(finite.max()) if finite.size else 0.0


def _difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want|, where equal non-finite values (NaN and NaN, +inf and +inf) agree and a
    non-finite value against anything else is an infinite difference."""
    if got.shape != want.shape:
        return float("inf")
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if not (np.isfinite(got) | same).all() or not (np.isfinite(want) | same).all():
        return float("inf")
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got.astype(np.float64) - want))
    return float(diff.max()) if diff.size else 0.0


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
