"""Channel rules for parameter-free ops: elementwise, pooling, reductions, matmul, einsum."""

from __future__ import annotations

import builtins
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.channels.rules import (
    METADATA_OPS,
    RuleContext,
    register,
)

T = torch.Tensor
METADATA_OPS.update({T.size, T.dim, T.numel, torch._assert, builtins.getattr, T.__len__})

# ---------------------------------------------------------------- same shape in and out

UNARY_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Softmax,
    nn.LogSoftmax,
)
UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.softmax,
    F.log_softmax,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.clamp,
    torch.exp,
    torch.sqrt,
    torch.neg,
    operator.neg,
    T.relu,
    T.sigmoid,
    T.tanh,
    T.softmax,
    T.contiguous,
    T.clone,
    T.float,
    T.to,
    T.clamp,
    T.exp,
    T.sqrt,
    T.neg,
    T.type_as,
    T.detach,
)


def same_shape_rule(ctx: RuleContext, node: fx.Node) -> None:
    """y = f(x) elementwise: every axis of x ↔ the same axis of y."""
    ctx.same_shape(node.args[0])


register(*UNARY_MODULES, *UNARY_FUNCTIONS)(same_shape_rule)

try:
    from torchvision.ops import stochastic_depth as _stochastic_depth

    register(_stochastic_depth)(same_shape_rule)
except ImportError:  # pragma: no cover
    pass


@register(
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    T.add,
    T.sub,
    T.mul,
    T.div,
    operator.iadd,
    operator.imul,
)
def broadcast_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Broadcasting: an operand's axis ↔ the output axis it lines up with (size > 1 only)."""
    out_shape = ctx.shape(node)
    for operand in node.args[:2]:
        shape = ctx.shape(operand)
        if shape is None:
            continue
        offset = len(out_shape) - len(shape)
        for axis, size in enumerate(shape):
            if (
                size == out_shape[axis + offset]
                and size > 1
                or size == out_shape[axis + offset] == 1
            ):
                ctx.link(ctx.value(operand, axis), ctx.out(axis + offset))


# ---------------------------------------------------------------- pooling, reductions

POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
POOL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    torch._C._nn.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
)


@register(*POOL_MODULES, *POOL_FUNCTIONS)
def pool_rule(ctx: RuleContext, node: fx.Node) -> None:
    """N×C×spatial pooling/resizing: batch and channel axes pass through; spatial axes are new."""
    for axis in (0, 1):
        ctx.link(ctx.value(node.args[0], axis), ctx.out(axis))


@register(torch.mean, torch.sum, torch.amax, T.mean, T.sum, T.amax)
def reduce_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Reduction: axes not reduced pass through (a reduced channel axis simply disappears)."""
    x = node.args[0]
    rank = len(ctx.shape(x))
    dims = ctx.arg(1, "dim")
    dims = range(rank) if dims is None else ([dims] if isinstance(dims, int) else dims)
    reduced = {d % rank for d in dims}
    keepdim = bool(ctx.arg(2, "keepdim", False))
    out_axis = 0
    for axis in range(rank):
        if axis in reduced:
            out_axis += keepdim
            continue
        ctx.link(ctx.value(x, axis), ctx.out(out_axis))
        out_axis += 1


# ---------------------------------------------------------------- products


@register(torch.matmul, operator.matmul, torch.bmm, T.matmul, T.bmm)
def matmul_rule(ctx: RuleContext, node: fx.Node) -> None:
    """a[…, n, k] @ b[…, k, m]: a.k ↔ b.k; out.n ↔ a.n; out.m ↔ b.m; batch axes broadcast."""
    a, b = node.args[:2]
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.shape(node)
    if len(sa) < 2 or len(sb) < 2:
        ctx.freeze_value(node, "matmul with a vector operand")
        return
    ctx.link(ctx.value(a, -1), ctx.value(b, -2))
    ctx.link(ctx.value(a, -2), ctx.out(-2))
    ctx.link(ctx.value(b, -1), ctx.out(-1))
    for operand, shape in ((a, sa), (b, sb)):
        for axis in range(len(shape) - 2):
            if shape[axis] == so[axis + len(so) - len(shape)] and shape[axis] > 1:
                ctx.link(ctx.value(operand, axis), ctx.out(axis + len(so) - len(shape)))


@register(torch.einsum, torch.functional.einsum)
def einsum_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Axes with the same letter are the same channel space, across operands and output."""
    equation = node.args[0].replace(" ", "")
    operands = node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if "..." in equation or "->" not in equation:
        ctx.freeze_value(node, f"einsum {equation!r} (ellipsis or implicit output)")
        return
    inputs, output = equation.split("->")
    first: dict[str, object] = {}
    for letters, operand in [*zip(inputs.split(","), operands, strict=True), (output, node)]:
        for axis, letter in enumerate(letters):
            dim = ctx.value(operand, axis)
            if letter in first:
                ctx.link(first[letter], dim)
            else:
                first[letter] = dim


# keep numpy imported for rules that build maps
_ = np


@register(F.scaled_dot_product_attention)
def sdpa_rule(ctx: RuleContext, node: fx.Node) -> None:
    """softmax(q kᵀ) v: q.E ↔ k.E; k.S ↔ v.S; out.L ↔ q.L; out.Ev ↔ v.Ev; batch/head axes."""
    q, k, v = (ctx.arg(i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
    ctx.link(ctx.value(q, -1), ctx.value(k, -1))
    ctx.link(ctx.value(k, -2), ctx.value(v, -2))
    ctx.link(ctx.value(q, -2), ctx.out(-2))
    ctx.link(ctx.value(v, -1), ctx.out(-1))
    for axis in range(len(ctx.shape(q)) - 2):
        for source in (q, k, v):
            ctx.link(ctx.value(source, axis), ctx.out(axis))
    mask = ctx.arg(3, "attn_mask")
    if isinstance(mask, fx.Node):
        ctx.freeze_value(mask, "attention mask")
