"""Handlers for ops that join, split, slice or pad tensors along an axis: cat, split / chunk,
indexing (tuple items and basic slicing), constant padding."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from graphopt.ops import examples as ex
from graphopt.ops.base import OpHandler, handles
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import arange, is_tuple_value, meta_items

T = torch.Tensor


@handles(torch.cat, torch.concat)
class Cat(OpHandler):
    """cat along d: input k's element i ↔ output element offset_k + i; other axes pass through."""

    examples = (lambda: ex.image(lambda x: torch.cat([x, x.relu()], 1)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
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


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    parts = x.split([3, 5], 1)
    return torch.cat([parts[1], parts[0]], 1)


@handles(torch.split, torch.chunk, T.split, T.chunk)
class Split(OpHandler):
    """Item k of a split along d: element i ↔ input element offset_k + i."""

    examples = (
        lambda: ex.image(_swap_halves),
        lambda: ex.image(lambda x: x.chunk(2, 1)[0] * x.chunk(2, 1)[1]),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
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

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        """Splits become ``torch.split`` with the new section sizes."""
        x = node.args[0]
        rank = len(ctx.old_shape(x))
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % rank
        sizes = [ctx.new_shape(node, item)[dim] for item, _ in meta_items(node)]
        node.op, node.target = "call_function", torch.split
        node.args, node.kwargs = (x, sizes), {"dim": dim}


@handles(operator.getitem)
class GetItem(OpHandler):
    """Item of a tuple value, or basic slicing of a tensor (ints, step-1 slices, None, ...)."""

    examples = (
        lambda: ex.image(lambda x: x[:, 2:6] + x[:, :4]),
        lambda: ex.image(lambda x: x[:, None, 1:].flatten(1, 2)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
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

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        """Slice bounds count the kept elements before them."""
        source, index = node.args
        if (
            not isinstance(source, fx.Node)
            or not meta_items(source)
            or meta_items(source)[0][0] is not None
        ):
            return
        items = list(index) if isinstance(index, tuple) else [index]
        in_axis, changed = 0, False
        for k, item in enumerate(items):
            if item is None:
                continue
            if (
                isinstance(item, slice)
                and item != slice(None)
                and len(ctx.dropped(source, in_axis))
            ):
                start, stop, _ = item.indices(ctx.old_shape(source)[in_axis])
                dropped = ctx.dropped(source, in_axis)
                new_start = start - int(np.sum(dropped < start))
                new_stop = stop - int(np.sum(dropped < stop))
                items[k] = slice(new_start, new_stop, item.step)
                changed = True
            in_axis += item is not Ellipsis
        if changed:
            node.args = (source, tuple(items) if isinstance(index, tuple) else items[0])


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


@handles(F.pad)
class Pad(OpHandler):
    """Constant padding: input element i ↔ output element before + i on every padded axis;
    the padded elements are zeros that may go with whatever they line up with."""

    examples = (
        lambda: ex.image(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))),  # shortcut
        lambda: ex.image(lambda x: F.pad(x, (1, 1, 1, 1)).relu()),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
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

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        """Pad widths count the padding elements that were kept on each side."""
        x, pad = node.args[0], list(node.args[1])
        rank = len(ctx.old_shape(x))
        for k in range(0, len(pad), 2):
            axis = rank - 1 - k // 2
            dropped = ctx.dropped(node, axis)
            before, size = pad[k], ctx.old_shape(x)[axis]
            pad[k] = before - int(np.sum(dropped < before))
            pad[k + 1] = pad[k + 1] - int(np.sum(dropped >= before + size))
        node.args = (x, tuple(pad), *node.args[2:])
