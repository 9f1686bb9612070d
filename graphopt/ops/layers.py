"""Handlers for layers with weights: convolutions and linear layers (modules and functions)."""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from graphopt.ops import examples as ex
from graphopt.ops.base import MacTerm, OpHandler, handles
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import Dim, arange, node_arg, numel, output_dims, value_dim


def _batch_axes_identity(ctx: CouplingContext, source: fx.Node, upto: int) -> None:
    for axis in range(upto):
        ctx.link(ctx.value(source, axis), ctx.out(axis))


def conv_macs_per_output(conv: nn.Module) -> int:
    """MACs of one output element of a (grouped) convolution: C_in / groups · Π kernel."""
    return (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


def _weight_dim(node: fx.Node, axis: int) -> Dim:
    return Dim("param", f"{node.target}.weight", axis)


@handles(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class Conv(OpHandler):
    """out[:, o] ↔ W[o] ↔ b[o]; in[:, c] ↔ W[:, c mod (C/g)]; depthwise: in c ↔ out c·m…c·m+m−1."""

    examples = (
        lambda: ex.image(nn.Conv2d(8, 6, 3, padding=1)),
        lambda: ex.image(nn.Conv2d(8, 16, 3, padding=1, groups=8)),  # depthwise, multiplier 2
        lambda: ex.image(nn.Conv2d(8, 8, 1, groups=2)),
        lambda: ex.image(nn.Conv2d(8, 6, 3, bias=False)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        m, x = ctx.module, node.args[0]
        _batch_axes_identity(ctx, x, 1)
        out_ch = ctx.out(1)
        weight_out = ctx.param("weight", 0)
        ctx.link(out_ch, weight_out)
        ctx.link(out_ch, ctx.param("bias", 0))
        in_ch = ctx.value(x, 1)
        per_group = m.in_channels // m.groups
        if m.groups == 1:
            ctx.link(in_ch, ctx.param("weight", 1))
        elif per_group == 1:  # depthwise (channel multiplier m)
            mult = m.out_channels // m.in_channels
            ctx.link(in_ch, out_ch, np.repeat(arange(m.in_channels), mult), arange(m.out_channels))
        else:  # grouped: the same local input index goes from every group
            ctx.link(
                in_ch,
                ctx.param("weight", 1),
                arange(m.in_channels),
                arange(m.in_channels) % per_group,
            )
            ctx.require_blocks(weight_out, m.groups, f"grouped conv {node.target}")

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        new_in = ctx.new_shape(node.args[0])[1]
        if m.groups > 1 and m.groups == m.in_channels:  # depthwise
            m.groups = new_in
        m.in_channels, m.out_channels = new_in, m.weight.shape[0]

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        return [
            (numel(node) * conv_macs_per_output(module), [*output_dims(node), _weight_dim(node, 1)])
        ]


@handles(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTranspose(OpHandler):
    """W is (in, out/g, k…): in[:, c] ↔ W[c]; out[:, o] ↔ W[:, o] ↔ b[o] (groups = 1 only)."""

    examples = (
        lambda: ex.image(nn.ConvTranspose2d(8, 6, 2, stride=2)),
        lambda: ex.image(nn.ConvTranspose2d(8, 4, 3, groups=2)),  # frozen: grouped
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        m, x = ctx.module, node.args[0]
        _batch_axes_identity(ctx, x, 1)
        if m.groups != 1:
            ctx.freeze(ctx.value(x, 1), f"grouped ConvTranspose {node.target} is not supported")
            ctx.freeze(ctx.out(1), f"grouped ConvTranspose {node.target} is not supported")
            return
        ctx.link(ctx.value(x, 1), ctx.param("weight", 0))
        ctx.link(ctx.out(1), ctx.param("weight", 1))
        ctx.link(ctx.out(1), ctx.param("bias", 0))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        x = node.args[0]
        per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return [(numel(x) * per_input, [*output_dims(x), _weight_dim(node, 1)])]


@handles(nn.Linear)
class Linear(OpHandler):
    """in[…, i] ↔ W[:, i]; out[…, o] ↔ W[o] ↔ b[o]; leading axes pass through."""

    examples = (
        lambda: ex.tokens(nn.Linear(8, 6)),
        lambda: ex.flat(lambda x: x.flatten(1)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x = node.args[0]
        _batch_axes_identity(ctx, x, len(ctx.shape(x)) - 1)
        ctx.link(ctx.value(x, -1), ctx.param("weight", 1))
        ctx.link(ctx.out(-1), ctx.param("weight", 0))
        ctx.link(ctx.out(-1), ctx.param("bias", 0))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        m.out_features, m.in_features = m.weight.shape

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        return [(numel(node) * module.in_features, [*output_dims(node), _weight_dim(node, 1)])]


@handles(F.linear)
class FunctionalLinear(OpHandler):
    """F.linear(x, W, b): x[…, i] ↔ W[:, i]; out[…, o] ↔ W[o] ↔ b[o]."""

    examples = (lambda: ex.tokens(ex.WithWeight(F.linear, (6, 8))),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x, weight, bias = node.args[0], ctx.arg(1, "weight"), ctx.arg(2, "bias")
        _batch_axes_identity(ctx, x, len(ctx.shape(x)) - 1)
        ctx.link(ctx.value(x, -1), ctx.value(weight, 1))
        ctx.link(ctx.out(-1), ctx.value(weight, 0))
        if isinstance(bias, fx.Node):
            ctx.link(ctx.out(-1), ctx.value(bias, 0))

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        weight = node_arg(node, 1, "weight")
        if not isinstance(weight, fx.Node) or "tensor_meta" not in weight.meta:
            return []
        columns = weight.meta["tensor_meta"].shape[-1]
        return [(numel(node) * columns, [*output_dims(node), value_dim(weight, 1)])]


@handles(F.conv1d, F.conv2d, F.conv3d)
class FunctionalConv(OpHandler):
    """F.conv*(x, W): counted, never pruned (every dim it touches is frozen)."""

    examples = (lambda: ex.image(ex.WithWeight(F.conv2d, (6, 8, 3, 3))),)

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        weight = node_arg(node, 1, "weight")
        if not isinstance(weight, fx.Node) or "tensor_meta" not in weight.meta:
            return []
        per_output = math.prod(weight.meta["tensor_meta"].shape[1:])
        return [(numel(node) * per_output, [*output_dims(node), value_dim(weight, 1)])]
