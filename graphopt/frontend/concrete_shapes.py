"""Tracing with concrete shapes: the fallback for ``forward`` code that branches on shapes.

Symbolic tracing gives up on ``if x.size(1) != c:``, ``range(x.shape[0])`` or
``assert x.dim() == 4``: a shape is a Proxy, and Python cannot branch on one. graphopt's IR is
static-shaped anyway (capture records every node's shape for the example inputs), so this
tracer runs the model on the example inputs alongside the trace and answers shape questions
(``size``, ``shape``, ``dim``, ``numel``, ``len``, ``dtype``, ``device``) with the real numbers. The graph is then
specialised to the example input shapes, as the compiled artifact is.

Branches on tensor *values* (``if x.sum() > 0``) still fail: specialising on data would give a
graph that is wrong for other inputs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from graphopt.frontend.tracer import LeafTracer


class ShapedProxy(fx.Proxy):
    """A Proxy that knows the value its node had on the example inputs (when it could run)."""

    value: Any = None

    def size(self, dim: int | None = None):
        if isinstance(self.value, torch.Tensor):
            return self.value.size() if dim is None else self.value.size(dim)
        return self._symbolic("size", dim)

    def dim(self):
        if isinstance(self.value, torch.Tensor):
            return self.value.dim()
        return self._symbolic("dim")

    def numel(self):
        if isinstance(self.value, torch.Tensor):
            return self.value.numel()
        return self._symbolic("numel")

    @property
    def shape(self):
        if isinstance(self.value, torch.Tensor):
            return self.value.shape
        return self.tracer.create_proxy("call_function", getattr, (self, "shape"), {})

    @property
    def ndim(self):
        return self._attribute("ndim")

    @property
    def dtype(self):
        return self._attribute("dtype")

    @property
    def device(self):
        return self._attribute("device")

    def _attribute(self, name: str):
        if isinstance(self.value, torch.Tensor):
            return getattr(self.value, name)
        return self.tracer.create_proxy("call_function", getattr, (self, name), {})

    def __len__(self):
        if isinstance(self.value, torch.Tensor | tuple | list):
            return len(self.value)
        return super().__len__()

    def _symbolic(self, method: str, *args):
        args = tuple(a for a in args if a is not None)
        return self.tracer.create_proxy("call_method", method, (self, *args), {})


class ConcreteShapeTracer(LeafTracer):
    """A :class:`LeafTracer` whose proxies carry their values on the example inputs."""

    def __init__(self, example_inputs, leaf_modules=(), leaf_types=()) -> None:
        super().__init__(leaf_modules, leaf_types)
        self._examples = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
        self._placeholders = 0
        self._running = False  # computing a value: module calls and attributes act eagerly
        self._shadow: nn.Module | None = None

    def trace(self, root, concrete_args=None):
        # values are computed on a copy, so in-place updates (BN statistics, counters) made
        # while tracing never reach the module the graph is built from
        self._shadow = copy.deepcopy(root)
        return super().trace(root, concrete_args)

    def proxy(self, node: fx.Node) -> ShapedProxy:
        return ShapedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest)
        if isinstance(proxy, ShapedProxy):
            proxy.value = self._value(kind, target, args, kwargs)
        return proxy

    def call_module(self, m, forward, args, kwargs):
        if self._running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _value(self, kind, target, args, kwargs) -> Any:
        if kind == "placeholder":
            index, self._placeholders = self._placeholders, self._placeholders + 1
            return self._examples[index] if index < len(self._examples) else None
        if kind == "output":
            return None
        try:
            args, kwargs = fx.node.map_aggregate((args, kwargs), _value_of)
        except _NoValue:
            return None
        self._running = True
        try:
            with torch.no_grad():
                return self._run(kind, target, args, kwargs)
        except Exception:  # noqa: BLE001 - no value: shape questions become graph nodes again
            return None
        finally:
            self._running = False

    def _run(self, kind, target, args, kwargs) -> Any:
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self._shadow.get_submodule(target)(*args, **kwargs)
        if kind == "get_attr":
            value = self._shadow
            for part in target.split("."):
                value = getattr(value, part)
            return value.clone() if isinstance(value, torch.Tensor) else value
        return None


class _NoValue(Exception):
    """An argument's value is unknown."""


def _value_of(arg: Any) -> Any:
    if isinstance(arg, ShapedProxy):
        if arg.value is None:
            raise _NoValue
        return arg.value
    if isinstance(arg, fx.Proxy):
        raise _NoValue
    return arg


def trace_with_concrete_shapes(
    model: nn.Module, example_inputs, leaf_modules=(), leaf_types=(), concrete_args=None
) -> fx.GraphModule:
    """Trace ``model`` with shape questions answered from ``example_inputs``."""
    tracer = ConcreteShapeTracer(example_inputs, leaf_modules, leaf_types)
    graph = tracer.trace(model, concrete_args or None)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)
