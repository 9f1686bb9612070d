"""Channel rules: what each op couples. Keyed by module type, torch callable or tensor method.

A rule is ``rule(ctx, node)``; it links dims (``ctx.link``), freezes them (``ctx.freeze``) or
declares block structure (``ctx.require_blocks``). After a rule runs, every output axis that
no link explains is frozen: its size is set by something other than a parameter (e.g. the
input's spatial size), so removing indices from it could not be done by slicing weights.
A node whose op has no rule freezes every dim it touches, with the op's name as the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from graphopt.channels.graph import ChannelGraph, Dim

Rule = Callable[["RuleContext", fx.Node], None]

MODULE_RULES: dict[type[nn.Module], Rule] = {}
FUNCTION_RULES: dict[Callable, Rule] = {}
# Ops that read a tensor's metadata (size, dim, ...) but couple no channels.
METADATA_OPS: set[Callable] = set()


def register(*keys: object) -> Callable[[Rule], Rule]:
    """Register a rule for module types, callables, or tensor methods (``torch.Tensor.view``)."""

    def decorate(rule: Rule) -> Rule:
        for key in keys:
            if isinstance(key, type) and issubclass(key, nn.Module):
                MODULE_RULES[key] = rule
            elif callable(key):
                FUNCTION_RULES[key] = rule
            else:
                raise TypeError(f"cannot key a channel rule by {key!r}")
        return rule

    return decorate


def op_key(gm: fx.GraphModule, node: fx.Node) -> object:
    """The object a node's rule is registered under (module type, callable or method)."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    if node.op == "call_method":
        return getattr(torch.Tensor, node.target, node.target)
    return node.target


def op_name(key: object) -> str:
    """A readable name for a rule key: ``Conv2d``, ``torch.cumsum``, ``Tensor.view``, …"""
    name = getattr(key, "__name__", None) or str(key)
    if isinstance(key, type):
        return name
    for prefix, namespace in (
        ("torch.", torch),
        ("Tensor.", torch.Tensor),
        ("F.", torch.nn.functional),
    ):
        if getattr(namespace, name, None) is key:
            return prefix + name
    module = getattr(key, "__module__", None)
    return f"{module}.{name}" if module else name


def _module_rule(module_type: type) -> Rule | None:
    for cls in module_type.__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


class RuleContext:
    """What a rule may read (shapes, modules, arguments) and write (links, freezes)."""

    def __init__(self, cg: ChannelGraph, node: fx.Node) -> None:
        self.cg, self.node, self.gm = cg, node, cg.gm

    @property
    def module(self) -> nn.Module:
        return self.gm.get_submodule(self.node.target)

    def arg(self, index: int, name: str, default: object = None) -> object:
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def shape(self, node: object, item: int | None = None) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        found = dict(meta_items(node)).get(item)
        return tuple(found.shape) if found is not None else None

    def value(self, node: object, axis: int, item: int | None = None) -> Dim | None:
        """The dim ``axis`` of a node's value (a parameter dim for ``get_attr`` nodes)."""
        shape = self.shape(node, item)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        axis %= len(shape)
        if node.op == "get_attr":
            dim = Dim("param", str(node.target), axis)
        else:
            dim = Dim("value", node.name, axis, item)
        self.cg.add_dim(dim, shape[axis])
        return dim

    def param(self, name: str, axis: int) -> Dim | None:
        """A dim of the current module's parameter or buffer ``name`` (None when absent)."""
        owner, _, attr = name.rpartition(".")
        tensor = getattr(self.module.get_submodule(owner) if owner else self.module, attr, None)
        if not isinstance(tensor, torch.Tensor):
            return None
        dim = Dim("param", f"{self.node.target}.{name}", axis % tensor.dim())
        self.cg.add_dim(dim, tensor.shape[axis])
        return dim

    def out(self, axis: int, item: int | None = None) -> Dim | None:
        return self.value(self.node, axis, item)

    def link(self, a: Dim | None, b: Dim | None, ia=None, ib=None) -> None:
        if a is not None and b is not None:
            self.cg.link(a, b, ia, ib)

    def same_shape(self, source: fx.Node, item: int | None = None) -> None:
        """Link every axis of ``source`` to the same axis of this node's output."""
        for axis in range(len(self.shape(source) or ())):
            self.link(self.value(source, axis), self.out(axis, item))

    def freeze(self, dim: Dim | None, reason: str) -> None:
        if dim is not None:
            self.cg.freeze(dim, reason)

    def freeze_value(self, node: fx.Node, reason: str) -> None:
        """Freeze every axis of a node's value (each item of a tuple value)."""
        for item, meta in meta_items(node):
            for axis in range(len(meta.shape)):
                self.freeze(self.value(node, axis, item), reason)

    def require_blocks(self, dim: Dim | None, count: int, reason: str) -> None:
        if dim is not None and count > 1:
            self.cg.require_blocks(dim, count, reason)


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Every node argument of ``node`` (flattened through lists and dicts)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def apply_rule(cg: ChannelGraph, node: fx.Node) -> None:
    """Run ``node``'s rule; freeze what it touches when there is none."""
    ctx = RuleContext(cg, node)
    if node.op == "placeholder":
        ctx.freeze_value(node, "model input")
        return
    if node.op == "output":
        for source in tensor_inputs(node):
            ctx.freeze_value(source, "model output")
        return
    if node.op == "get_attr":
        return
    key = op_key(cg.gm, node)
    if key in METADATA_OPS or not _has_tensor(node, ctx):
        return
    rule = _module_rule(key) if node.op == "call_module" else FUNCTION_RULES.get(key)
    if rule is None:
        reason = f"no channel rule for {op_name(key)} (node {node.name})"
        for source in [*tensor_inputs(node), node]:
            ctx.freeze_value(source, reason)
        return
    rule(ctx, node)
    _freeze_unexplained_outputs(ctx)


def meta_items(node: fx.Node) -> list[tuple[int | None, TensorMetadata]]:
    """``[(None, meta)]`` for a tensor value, ``[(i, meta_i), …]`` for a tuple of tensors."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return [(None, meta)]
    if isinstance(meta, (tuple, list)):
        return [(i, m) for i, m in enumerate(meta) if isinstance(m, TensorMetadata)]
    return []


def is_tuple_value(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata)


def _has_tensor(node: fx.Node, ctx: RuleContext) -> bool:
    return any(meta_items(n) for n in [node, *tensor_inputs(node)])


def _freeze_unexplained_outputs(ctx: RuleContext) -> None:
    for item, m in meta_items(ctx.node):
        for axis in range(len(m.shape)):
            dim = ctx.out(axis, item)
            if ctx.cg.graph.degree(dim) == 0:
                ctx.freeze(dim, f"size of {dim} is not set by any parameter")


def arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


# Register the rule families (import for side effects).
from graphopt.channels import (  # noqa: E402, F401
    rules_layers,
    rules_shape,
    rules_tensor_ops,
    rules_vision,
)
