"""Handlers for ops that move, add or regroup axes: permute, transpose, unsqueeze, expand,
reshape / view / flatten."""

from __future__ import annotations

import builtins
import math
import operator

import torch
from torch import fx, nn

from graphopt.ops import examples as ex
from graphopt.ops.base import OpHandler, handles
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import arange

T = torch.Tensor


def _link_axes(ctx: CouplingContext, source: fx.Node, order: list[int]) -> None:
    """Output axis i ↔ input axis order[i]."""
    for out_axis, in_axis in enumerate(order):
        ctx.link(ctx.value(source, in_axis), ctx.out(out_axis))


@handles(torch.permute, T.permute)
class Permute(OpHandler):
    """Output axis i ↔ input axis dims[i]."""

    examples = (lambda: ex.image(lambda x: x.permute(0, 2, 3, 1).relu().permute(0, 3, 1, 2)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        dims = node.args[1:] if node.op == "call_method" else [ctx.arg(1, "dims")]
        single = len(dims) == 1 and isinstance(dims[0], (list, tuple))
        order = list(dims[0]) if single else list(dims)
        _link_axes(ctx, node.args[0], [d % len(order) for d in order])


@handles(torch.transpose, torch.swapaxes, T.transpose, T.swapaxes)
class Transpose(OpHandler):
    """Two axes swap places; the others pass through."""

    examples = (lambda: ex.image(lambda x: torch.transpose(x, 1, 3).relu().transpose(1, 3)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        rank = len(ctx.shape(node.args[0]))
        a, b = node.args[1] % rank, node.args[2] % rank
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        _link_axes(ctx, node.args[0], order)


@handles(torch.unsqueeze, T.unsqueeze)
class Unsqueeze(OpHandler):
    """A new size-1 axis (frozen); the others pass through."""

    examples = (lambda: ex.flat(lambda x: x.mean((2, 3)).unsqueeze(1).flatten(1)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        rank = len(ctx.shape(node))
        new = ctx.arg(1, "dim") % rank
        for out_axis in range(rank):
            if out_axis != new:
                ctx.link(ctx.value(node.args[0], out_axis - (out_axis > new)), ctx.out(out_axis))
        ctx.freeze(ctx.out(new), "axis added by unsqueeze")


@handles(T.expand)
class Expand(OpHandler):
    """Axes that keep their size pass through; expanded (size-1) axes are new."""

    examples = (lambda: ex.image(lambda x: x + x.mean((2, 3), keepdim=True).expand(2, 8, 6, 6)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x, out = node.args[0], ctx.shape(node)
        shape = ctx.shape(x)
        offset = len(out) - len(shape)
        for axis, size in enumerate(shape):
            if size == out[axis + offset]:
                ctx.link(ctx.value(x, axis), ctx.out(axis + offset))
        _link_size_args(ctx, node, _size_args(node))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        _literal_sizes(ctx, node)


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


def _link_size_args(ctx: CouplingContext, node: fx.Node, sizes: list[object]) -> None:
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


@handles(torch.reshape, torch.flatten, T.view, T.reshape, T.flatten, nn.Flatten)
class Reshape(OpHandler):
    """Reshape as splits and merges of axes. In a split n → (a, b, …) or merge (…) → n, the
    largest factor carries the channel coupling (inner index i ↦ (i // stride) mod size);
    the other factors are frozen, so pruning never breaks the product structure."""

    examples = (
        lambda: ex.flat(nn.Flatten()),
        lambda: ex.image(lambda x: x.view(2, 2, 4, 36).relu().reshape(2, 8, 6, 6)),
        lambda: ex.tokens(lambda x: torch.reshape(x, (2, 5, 2, 4)).flatten(2)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
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

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        """Literal sizes of view / reshape / torch.reshape follow the new shape."""
        method = node.op == "call_method" and node.target in ("view", "reshape")
        if method or node.target is torch.reshape:
            _literal_sizes(ctx, node)


def _factor_link(ctx, merged, factors, sizes, merged_is_input: bool) -> None:
    carrier = max(range(len(sizes)), key=lambda k: (sizes[k], -k))
    stride = math.prod(sizes[carrier + 1 :])
    n = math.prod(sizes)
    ctx.link(merged, factors[carrier], arange(n), (arange(n) // stride) % sizes[carrier])
    for k, factor in enumerate(factors):
        if k != carrier:
            ctx.freeze(factor, "secondary factor of a reshape (the channel index is elsewhere)")


def _literal_sizes(ctx: SurgeryContext, node: fx.Node) -> None:
    """Literal sizes follow the new shape (``-1`` and computed sizes are left alone)."""
    new = ctx.new_shape(node)
    packed = node.op == "call_function" or (
        len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    )
    sizes = list(node.args[1] if packed else node.args[1:])
    sizes = [new[a] if isinstance(s, int) and s != -1 else s for a, s in enumerate(sizes)]
    node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
