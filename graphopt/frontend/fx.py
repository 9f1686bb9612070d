"""Capture: ``nn.Module`` → module-level ``torch.fx.GraphModule`` with shapes on every node.

Leaf modules (kept as one ``call_module`` node) are torch.fx's defaults, i.e. every module
defined in ``torch.nn`` (Conv, Linear, norms, activations, attention), plus the user's
``leaf_modules`` (qualified names or glob patterns) and ``leaf_types``.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import fx, nn

from graphopt.analysis.shapes import propagate_shapes
from graphopt.errors import CaptureError, first_line
from graphopt.frontend.tracer import LeafTracer

ExampleInputs = torch.Tensor | Sequence[torch.Tensor]
ROUTE_SYMBOLIC = "fx"
ROUTE_CONCRETE = "fx with concrete shapes"


def as_input_tuple(example_inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
    """Normalise one tensor or a sequence of tensors to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def capture(
    model: nn.Module | str | Path,
    example_inputs: ExampleInputs | None = None,
    *,
    leaf_modules: Iterable[str] = (),
    leaf_types: Iterable[type[nn.Module]] = (),
) -> fx.GraphModule:
    """Trace ``model`` into the IR and record every node's shape and dtype.

    ``model`` is a module or the path of an ``.onnx`` file (converted with onnx2torch and
    checked against ONNX Runtime; its declared input shapes are used when ``example_inputs``
    is omitted). The model is deep-copied first, so the IR never shares parameters or
    submodules with the caller's model: rewriting the IR cannot change the model it came from.
    """
    if isinstance(model, str | Path):
        return _capture_onnx(Path(model), example_inputs, leaf_modules, leaf_types)
    if not isinstance(model, nn.Module):
        raise CaptureError(f"capture expects a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise CaptureError("capture needs example_inputs for a torch module")
    inputs = as_input_tuple(example_inputs)
    _check_input_count(model, inputs)
    model = copy.deepcopy(model)
    tracer = LeafTracer(leaf_modules, leaf_types)
    if tracer.is_leaf_module(model, ""):
        gm = _single_leaf_graph(model, len(inputs))  # tracing would go inside the root
    else:
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        gm = _trace(model, tracer, inputs, leaf_modules, leaf_types)
        _refuse_mutated_buffers(model, buffers)
    propagate_shapes(gm, inputs)
    return gm


def _refuse_mutated_buffers(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Python in ``forward`` that updates a buffer (a call counter, a hand-written running
    mean) runs once while tracing and never in the graph: refuse rather than freeze it."""
    changed = [
        name
        for name, buffer in model.named_buffers()
        if name in before and not _same(before[name], buffer)
    ]
    if changed:
        raise CaptureError(
            f"{type(model).__name__}.forward changes buffer(s) {changed} in Python code the "
            "graph would not repeat (it would keep the traced value frozen)",
            hint="move the update into a leaf module (capture(..., leaf_modules=[...])) or out "
            "of forward",
        )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape and values, NaN equal to NaN (a diverged model's statistics are not a
    mutation)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True)
    return torch.equal(a, b)


def _trace(model, tracer, inputs, leaf_modules, leaf_types) -> fx.GraphModule:
    """Symbolic tracing; where ``forward`` branches on shapes, tracing with concrete shapes.

    The route taken is ``gm.meta["capture_route"]`` (and the report's ``capture_route``)."""
    from graphopt.frontend.concrete_shapes import trace_with_concrete_shapes

    defaults = _unfed_defaults(model, len(inputs))
    try:
        graph = tracer.trace(model, concrete_args=defaults or None)
        route = ROUTE_SYMBOLIC
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes a CaptureError
        try:
            gm = trace_with_concrete_shapes(model, inputs, leaf_modules, leaf_types, defaults)
        except Exception:  # noqa: BLE001 - report the symbolic failure: it names the cause
            raise _explain_trace_failure(model, exc) from exc
        gm.meta["capture_route"] = ROUTE_CONCRETE
        gm.meta["capture_fallback_reason"] = first_line(exc)
        return _drop_constant_placeholders(gm, len(inputs))
    gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    gm.meta["capture_route"] = route
    return _drop_constant_placeholders(gm, len(inputs))


def _drop_constant_placeholders(gm: fx.GraphModule, num_inputs: int) -> fx.GraphModule:
    """Erase the placeholders FX leaves for ``concrete_args`` (with the guards it checks them
    by) where nothing they feed reaches the output: the graph takes exactly the example inputs."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in placeholders[num_inputs:]:
        downstream, frontier = {node}, [node]
        while frontier:
            for user in frontier.pop().users:
                if user not in downstream:
                    downstream.add(user)
                    frontier.append(user)
        if any(n.op == "output" for n in downstream):
            continue
        for dead in sorted(downstream, key=order.__getitem__, reverse=True):
            gm.graph.erase_node(dead)
    gm.recompile()
    return gm


def _check_input_count(model: nn.Module, inputs: tuple) -> None:
    """More example inputs than ``forward`` takes would be dropped silently by FX."""
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        kinds = ", ".join(type(x).__name__ for x in inputs)
        raise CaptureError(f"example inputs must be tensors, got ({kinds})")
    parameters = _forward_parameters(model)
    if parameters is None:
        return
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    most = sum(kind in positional for kind in kinds)
    if len(inputs) > most:
        raise CaptureError(
            f"{type(model).__name__}.forward takes {most} input(s), got {len(inputs)} example inputs"
        )


def _forward_parameters(model: nn.Module) -> list[inspect.Parameter] | None:
    """``model.forward``'s parameters, or ``None`` when it has no readable signature."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def _unfed_defaults(model: nn.Module, num_inputs: int) -> dict:
    """``forward``'s parameters after the example inputs that have defaults (e.g.
    ``return_features=False``): traced as the constants they are, not as graph inputs."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default
        for p in (_forward_parameters(model) or [])[num_inputs:]
        if p.kind in named and p.default is not inspect.Parameter.empty
    }


def _capture_onnx(path: Path, example_inputs, leaf_modules, leaf_types) -> fx.GraphModule:
    from graphopt.frontend import onnx

    if path.suffix.lower() != ".onnx" or not path.is_file():
        raise CaptureError(f"{path}: expected an existing .onnx file")
    proto = onnx.read_onnx(path)
    if example_inputs is None:
        inputs = onnx.example_inputs_for(proto, path)
    else:
        inputs = as_input_tuple(example_inputs)
    gm = capture(
        onnx.to_module(proto, path), inputs, leaf_modules=leaf_modules, leaf_types=leaf_types
    )
    onnx.check_against_onnxruntime(path, gm, inputs)
    return gm


def _single_leaf_graph(leaf: nn.Module, num_inputs: int) -> fx.GraphModule:
    """``x₀…xₙ ↦ module(x₀…xₙ)`` for a model that is itself a leaf (``capture(nn.Conv2d(..), x)``)."""
    root = nn.Module()
    root.add_module("module", leaf)
    graph = fx.Graph()
    args = tuple(graph.placeholder(f"input_{i}") for i in range(num_inputs))
    graph.output(graph.call_module("module", args))
    return fx.GraphModule(root, graph, type(leaf).__name__)


def _explain_trace_failure(model: nn.Module, exc: Exception) -> CaptureError:
    """Find the innermost module whose ``forward`` raised, and its source line."""
    names = {id(m): name for name, m in model.named_modules()}
    module_name, location = None, None
    for frame, lineno in _traceback_frames(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            module_name = names[id(owner)]
            code = linecache.getline(frame.f_code.co_filename, lineno).strip()
            location = f"{frame.f_code.co_filename}:{lineno}: {code}"
    if module_name is None:
        hint = "make the model traceable by torch.fx (see torch.fx's limitations)"
    elif module_name == "":
        hint = (
            "the top-level forward itself is not traceable; move the untraceable code into a "
            "submodule and mark it as a leaf, or wrap the function with torch.fx.wrap"
        )
    else:
        kind = type(model.get_submodule(module_name)).__name__
        hint = (
            f"mark the submodule as a leaf: capture(..., leaf_modules=[{module_name!r}]) or "
            f"leaf_types=[{kind}] (recipe: capture.leaf_modules)"
        )
    message = f"cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}"
    return CaptureError(message, module=module_name, location=location, hint=hint)


def _traceback_frames(tb: types.TracebackType | None):
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next
