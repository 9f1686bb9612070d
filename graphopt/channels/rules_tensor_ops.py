"""Channel rules for parameter-free ops: elementwise, pooling, shape ops, matmul, einsum."""

from __future__ import annotations

import builtins
import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.channels.rules import (
    METADATA_OPS,
    RuleContext,
    arange,
    is_tuple_value,
    meta_items,
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


# ---------------------------------------------------------------- axis moves


def _link_axes(ctx: RuleContext, source: fx.Node, order: list[int]) -> None:
    """Output axis i ↔ input axis order[i]."""
    for out_axis, in_axis in enumerate(order):
        ctx.link(ctx.value(source, in_axis), ctx.out(out_axis))


@register(torch.permute, T.permute)
def permute_rule(ctx: RuleContext, node: fx.Node) -> None:
    dims = node.args[1:] if node.op == "call_method" else [ctx.arg(1, "dims")]
    order = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)
    _link_axes(ctx, node.args[0], [d % len(order) for d in order])


@register(torch.transpose, torch.swapaxes, T.transpose, T.swapaxes)
def transpose_rule(ctx: RuleContext, node: fx.Node) -> None:
    rank = len(ctx.shape(node.args[0]))
    a, b = node.args[1] % rank, node.args[2] % rank
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    _link_axes(ctx, node.args[0], order)


@register(torch.unsqueeze, T.unsqueeze)
def unsqueeze_rule(ctx: RuleContext, node: fx.Node) -> None:
    rank = len(ctx.shape(node))
    new = ctx.arg(1, "dim") % rank
    for out_axis in range(rank):
        if out_axis != new:
            ctx.link(ctx.value(node.args[0], out_axis - (out_axis > new)), ctx.out(out_axis))
    ctx.freeze(ctx.out(new), "axis added by unsqueeze")


@register(T.expand)
def expand_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Axes that keep their size pass through; expanded (size-1) axes are new."""
    x, out = node.args[0], ctx.shape(node)
    shape = ctx.shape(x)
    offset = len(out) - len(shape)
    for axis, size in enumerate(shape):
        if size == out[axis + offset]:
            ctx.link(ctx.value(x, axis), ctx.out(axis + offset))
    _link_size_args(ctx, node, _size_args(node))


# ---------------------------------------------------------------- reshape


def _axis_runs(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes of ``a`` and ``b`` with equal products (size-1 axes dropped)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    runs, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ra, rb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                pa *= a[ia[i]]
                ra.append(ia[i])
                i += 1
            elif pb < pa and j < len(ib):
                pb *= b[ib[j]]
                rb.append(ib[j])
                j += 1
            else:
                return None
        runs.append((ra, rb))
    return runs if i == len(ia) and j == len(ib) else None


def size_source(value: object) -> tuple[fx.Node, int] | None:
    """``x.size(j)``, ``x.shape[j]`` or ``x.size()[j]`` → ``(x, j)``; anything else → None."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_method" and value.target == "size" and len(value.args) == 2:
        return value.args[0], value.args[1]
    if value.target is operator.getitem and isinstance(value.args[1], int):
        holder = value.args[0]
        is_shape = (
            holder.op == "call_function"
            and holder.target is builtins.getattr
            and holder.args[1] == "shape"
        )
        is_size = holder.op == "call_method" and holder.target == "size" and len(holder.args) == 1
        if is_shape or is_size:
            return holder.args[0], value.args[1]
    return None


def _link_size_args(ctx: RuleContext, node: fx.Node, sizes: list[object]) -> None:
    """An output size read from another tensor (``x.shape[3]``) must stay equal to it."""
    for axis, size in enumerate(sizes):
        source = size_source(size)
        if source is not None:
            ctx.link(ctx.value(source[0], source[1]), ctx.out(axis))


def _size_args(node: fx.Node) -> list[object]:
    if node.op == "call_function":
        return (
            list(node.args[1])
            if len(node.args) > 1 and isinstance(node.args[1], (list, tuple))
            else []
        )
    if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)):
        return list(node.args[1])
    return list(node.args[1:])


@register(torch.reshape, torch.flatten, T.view, T.reshape, T.flatten, nn.Flatten)
def reshape_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Reshape as splits and merges of axes. In a split n → (a, b, …) or merge (…) → n, the
    largest factor carries the channel coupling (inner index i ↦ (i // stride) mod size);
    the other factors are frozen, so pruning never breaks the product structure."""
    x = node.args[0]
    src, dst = ctx.shape(x), ctx.shape(node)
    runs = _axis_runs(src, dst)
    if runs is None:
        ctx.freeze_value(x, f"reshape {src} → {dst} is not a split/merge of axes")
        return
    for axes_in, axes_out in runs:
        if len(axes_in) == 1 and len(axes_out) == 1:
            ctx.link(ctx.value(x, axes_in[0]), ctx.out(axes_out[0]))
        elif len(axes_in) == 1:
            _factor_link(
                ctx,
                ctx.value(x, axes_in[0]),
                [ctx.out(a) for a in axes_out],
                [dst[a] for a in axes_out],
                merged_is_input=True,
            )
        elif len(axes_out) == 1:
            _factor_link(
                ctx,
                ctx.out(axes_out[0]),
                [ctx.value(x, a) for a in axes_in],
                [src[a] for a in axes_in],
                merged_is_input=False,
            )
        else:
            for a in axes_in:
                ctx.freeze(ctx.value(x, a), f"reshape {src} → {dst} mixes several axes")
    if node.target in (T.view, T.reshape, torch.reshape):
        _link_size_args(ctx, node, _size_args(node))


def _factor_link(ctx, merged, factors, sizes, merged_is_input: bool) -> None:
    carrier = max(range(len(sizes)), key=lambda k: (sizes[k], -k))
    stride = math.prod(sizes[carrier + 1 :])
    n = math.prod(sizes)
    ctx.link(merged, factors[carrier], arange(n), (arange(n) // stride) % sizes[carrier])
    for k, factor in enumerate(factors):
        if k != carrier:
            ctx.freeze(factor, "secondary factor of a reshape (the channel index is elsewhere)")


# ---------------------------------------------------------------- concat, split, slicing


@register(torch.cat, torch.concat)
def cat_rule(ctx: RuleContext, node: fx.Node) -> None:
    """cat along d: input k's element i ↔ output element offset_k + i; other axes pass through."""
    inputs, dim = ctx.arg(0, "tensors"), ctx.arg(1, "dim", 0)
    rank = len(ctx.shape(node))
    dim %= rank
    offset = 0
    for source in inputs:
        size = ctx.shape(source)[dim]
        ctx.link(ctx.value(source, dim), ctx.out(dim), arange(size), arange(size) + offset)
        offset += size
        for axis in range(rank):
            if axis != dim:
                ctx.link(ctx.value(source, axis), ctx.out(axis))


@register(torch.split, torch.chunk, T.split, T.chunk)
def split_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Item k of a split along d: element i ↔ input element offset_k + i."""
    x = node.args[0]
    rank = len(ctx.shape(x))
    dim = ctx.arg(2, "dim", 0) % rank
    offset = 0
    for item, _ in meta_items(node):
        size = ctx.shape(node, item)[dim]
        ctx.link(ctx.value(x, dim), ctx.out(dim, item), arange(size) + offset, arange(size))
        offset += size
        for axis in range(rank):
            if axis != dim:
                ctx.link(ctx.value(x, axis), ctx.out(axis, item))


@register(operator.getitem)
def getitem_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Item of a tuple value, or basic slicing of a tensor (ints, step-1 slices, None, ...)."""
    source, index = node.args
    if is_tuple_value(source):
        if not isinstance(index, int):
            ctx.freeze_value(node, f"indexing a tuple value with {index!r}")
            return
        for axis in range(len(ctx.shape(node) or ())):
            ctx.link(ctx.value(source, axis, item=index), ctx.out(axis))
        return
    plan = _slice_plan(ctx.shape(source), index)
    if plan is None:
        ctx.freeze_value(source, f"indexing {index!r} is not basic slicing")
        return
    for in_axis, out_axis, start, step in plan:
        if out_axis is None:
            ctx.freeze(ctx.value(source, in_axis), f"index {start} of this axis is read")
            continue
        size = ctx.shape(node)[out_axis]
        ia = start + step * arange(size)
        if step != 1 and size > 1:
            ctx.freeze(ctx.value(source, in_axis), "strided slice")
        ctx.link(ctx.value(source, in_axis), ctx.out(out_axis), ia, arange(size))


def _slice_plan(shape, index):
    """[(input axis, output axis or None, start, step)] for basic indexing, else None."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list)) for i in items) or items.count(Ellipsis) > 1:
        return None
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - consumed)
    items += [slice(None)] * (len(shape) - sum(1 for i in items if i is not None))
    plan, in_axis, out_axis = [], 0, 0
    for item in items:
        if item is None:
            out_axis += 1
        elif isinstance(item, int):
            plan.append((in_axis, None, item, 1))
            in_axis += 1
        elif isinstance(item, slice):
            start, _, step = item.indices(shape[in_axis])
            plan.append((in_axis, out_axis, start, step))
            in_axis, out_axis = in_axis + 1, out_axis + 1
        else:
            return None
    return plan


@register(F.pad)
def pad_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Constant padding: input element i ↔ output element before + i on every padded axis;
    the padded elements are zeros that may go with whatever they line up with."""
    x, pad = node.args[0], ctx.arg(1, "pad")
    mode = ctx.arg(2, "mode", "constant")
    rank = len(ctx.shape(x))
    befores = {rank - 1 - k // 2: pad[k] for k in range(0, len(pad), 2)}
    for axis in range(rank):
        size = ctx.shape(x)[axis]
        before = befores.get(axis, 0)
        if before < 0 or (axis in befores and mode != "constant"):
            ctx.freeze(ctx.value(x, axis), f"{mode} padding with {pad}")
            continue
        ctx.link(ctx.value(x, axis), ctx.out(axis), arange(size), arange(size) + before)


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
