"""Channel rules for shape ops: axis moves, reshapes, concat/split, slicing, channel padding."""

from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.channels.rules import RuleContext, arange, is_tuple_value, meta_items, register

T = torch.Tensor

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
    bounds = [b for i in items if isinstance(i, slice) for b in (i.start, i.stop, i.step)]
    if shape is None or any(not (b is None or isinstance(b, int)) for b in bounds):
        return None  # a bound computed in the graph (x[:, :n] with n = size(1)): not basic
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
