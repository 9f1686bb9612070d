"""Params and MACs, counted on the FX graph from the shapes recorded at capture.

Conventions (stated once, used everywhere): one multiply-accumulate per weight use; norms
count one MAC per output element (the affine scale-and-shift); activations, pooling and
elementwise ops count zero. Each op's count is its handler's ``mac_terms``
(:mod:`graphopt.ops`), the same terms the pruning budget scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.ops import handler_for, module_of
from graphopt.ops.layers import conv_macs_per_output
from graphopt.report import LayerChange, ModelStats


def node_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    """MACs of one node (zero for ops whose handler counts none)."""
    return handler_for(gm, node).macs(node, module_of(gm, node))


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


def chain_macs(modules: list[nn.Module], node: fx.Node) -> int:
    """MACs of layers applied in sequence to ``node``'s input (shapes recorded at capture)."""
    shape = list(shape_of(node.args[0]))
    total = 0
    for m in modules:
        if isinstance(m, nn.Linear):
            shape[-1] = m.out_features
            total += math.prod(shape[:-1]) * m.in_features * m.out_features
            continue
        for axis in (0, 1):
            k, s, p, d = m.kernel_size[axis], m.stride[axis], m.padding[axis], m.dilation[axis]
            shape[2 + axis] = (shape[2 + axis] + 2 * p - d * (k - 1) - 1) // s + 1
        shape[1] = m.out_channels
        total += math.prod(shape) * conv_macs_per_output(m)
    return total
