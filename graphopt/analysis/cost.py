"""Params and MACs, counted on the FX graph from the shapes recorded at capture.

Conventions (stated once, used everywhere): one multiply-accumulate per weight use; norms
count one MAC per output element (the affine scale-and-shift); activations, pooling and
elementwise ops count zero. Handlers are keyed by module type (looked up along the MRO) and
by torch callable.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.report import LayerChange, ModelStats

ModuleMacs = Callable[[nn.Module, fx.Node], int]
FunctionMacs = Callable[[fx.Node], int]

MODULE_MACS: dict[type[nn.Module], ModuleMacs] = {}
FUNCTION_MACS: dict[Callable, FunctionMacs] = {}


def _register(registry: dict, *keys):
    def decorate(fn):
        for key in keys:
            registry[key] = fn
        return fn

    return decorate


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _input_shape(node: fx.Node, index: int = 0) -> tuple[int, ...] | None:
    arg = node.args[index] if len(node.args) > index else None
    return shape_of(arg) if isinstance(arg, fx.Node) else None


@_register(MODULE_MACS, nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_macs(m: nn.Module, node: fx.Node) -> int:
    per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return _numel(shape_of(node)) * per_output


@_register(MODULE_MACS, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_macs(m: nn.Module, node: fx.Node) -> int:
    per_input = (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return _numel(_input_shape(node)) * per_input


@_register(MODULE_MACS, nn.Linear)
def _linear_macs(m: nn.Module, node: fx.Node) -> int:
    return _numel(shape_of(node)) * m.in_features


@_register(
    MODULE_MACS,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)
def _norm_macs(m: nn.Module, node: fx.Node) -> int:
    return _numel(shape_of(node))


@_register(MODULE_MACS, nn.MultiheadAttention)
def _mha_macs(m: nn.MultiheadAttention, node: fx.Node) -> int:
    q, k = _input_shape(node, 0), _input_shape(node, 1)
    if q is None or k is None:
        return 0
    seq_dim = 1 if m.batch_first else 0
    batch = q[1 - seq_dim] if len(q) == 3 else 1
    lq, lk, e = (
        q[seq_dim] if len(q) == 3 else q[0],
        k[seq_dim] if len(k) == 3 else k[0],
        m.embed_dim,
    )
    projections = lq * e * e + lk * e * m.kdim + lk * e * m.vdim + lq * e * e
    attention = 2 * lq * lk * e
    return batch * (projections + attention)


def _matmul_macs(node: fx.Node) -> int:
    a, b = _input_shape(node, 0), _input_shape(node, 1)
    out = shape_of(node)
    if a is None or b is None or out is None:
        return 0
    return _numel(out) * a[-1]


for _fn in (
    torch.matmul,
    torch.mm,
    torch.bmm,
    operator.matmul,
    torch.Tensor.matmul,
    torch.Tensor.mm,
    torch.Tensor.bmm,
):
    FUNCTION_MACS[_fn] = _matmul_macs


@_register(FUNCTION_MACS, F.linear)
def _f_linear_macs(node: fx.Node) -> int:
    weight = _input_shape(node, 1)
    return _numel(shape_of(node)) * weight[-1] if weight else 0


@_register(FUNCTION_MACS, F.conv1d, F.conv2d, F.conv3d)
def _f_conv_macs(node: fx.Node) -> int:
    weight = _input_shape(node, 1)
    return _numel(shape_of(node)) * math.prod(weight[1:]) if weight else 0


@_register(FUNCTION_MACS, F.scaled_dot_product_attention)
def _sdpa_macs(node: fx.Node) -> int:
    q, k, v = (_input_shape(node, i) for i in range(3))
    if q is None or k is None or v is None:
        return 0
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


@_register(FUNCTION_MACS, F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm)
def _f_norm_macs(node: fx.Node) -> int:
    return _numel(shape_of(node))


def _lookup_module(m: nn.Module) -> ModuleMacs | None:
    for cls in type(m).__mro__:
        if cls in MODULE_MACS:
            return MODULE_MACS[cls]
    return None


def node_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    """MACs of one node (zero for ops without a handler)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        handler = _lookup_module(module)
        return handler(module, node) if handler else 0
    if node.op == "call_function":
        handler = FUNCTION_MACS.get(node.target)
        return handler(node) if handler else 0
    if node.op == "call_method":
        handler = FUNCTION_MACS.get(getattr(torch.Tensor, node.target, None))
        return handler(node) if handler else 0
    return 0


@dataclass(frozen=True)
class NodeCost:
    """Cost of one node: its MACs and the parameters its module owns directly."""

    node: str
    op: str
    target: str
    shape: tuple[int, ...] | None
    macs: int
    params: int


def node_costs(gm: fx.GraphModule) -> list[NodeCost]:
    """Per-node costs in graph order (placeholders and output excluded)."""
    costs = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        params = 0
        if node.op == "call_module":
            params = sum(p.numel() for p in gm.get_submodule(node.target).parameters())
        costs.append(
            NodeCost(
                node.name, node.op, _target_name(node), shape_of(node), node_macs(gm, node), params
            )
        )
    return costs


def _target_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))


def model_stats(gm: fx.GraphModule) -> ModelStats:
    """Total parameters (each counted once) and MACs of ``gm`` on its recorded shapes."""
    params = sum(p.numel() for p in gm.parameters())
    macs = sum(node_macs(gm, node) for node in gm.graph.nodes)
    return ModelStats(params=params, macs=macs)


def layer_changes(before: fx.GraphModule, after: fx.GraphModule) -> list[LayerChange]:
    """Every parameterised layer of ``before`` with its cost in ``after`` (the layer itself, or
    the modules that replaced it: ``name.0``, ``name.1``, ...)."""
    old, new = _layer_costs(before), _layer_costs(after)
    changes = []
    for name, (kind, macs, params, width) in old.items():
        parts = [v for k, v in new.items() if k == name or k.startswith(f"{name}.")]
        changes.append(
            LayerChange(
                name=name,
                kind=kind,
                macs_before=macs,
                macs_after=sum(p[1] for p in parts),
                params_before=params,
                params_after=sum(p[2] for p in parts),
                width_before=width,
                width_after=parts[-1][3] if parts else None,
            )
        )
    return changes


def _layer_costs(gm: fx.GraphModule) -> dict[str, tuple[str, int, int, int | None]]:
    costs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        params = sum(p.numel() for p in module.parameters())
        if not params:
            continue
        shape = shape_of(node)
        width = None
        if shape and len(shape) >= 2:
            width = shape[-1] if isinstance(module, nn.Linear) else shape[1]
        name = str(node.target)
        kind, macs, _, _ = costs.get(name, (type(module).__name__, 0, 0, None))
        costs[name] = (kind, macs + node_macs(gm, node), params, width)  # summed over calls
    return costs
