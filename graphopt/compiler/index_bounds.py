"""Which integer inputs index a table, and how many rows it has: the range an artifact checks
before running, because the compiled gather reads memory past the table for an id out of range
(PyTorch raises ``IndexError``; an unchecked artifact returns garbage or crashes the process).

Read from the ``torch.export`` program the artifact is compiled from: a user input reaches
``embedding``/``index_select``/``take``/``gather``/``index`` through ops that keep its values
(views, reshapes, casts, slices); the range is [0, rows) of the smallest table it indexes.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten

# op → (position of the index argument, position of the table, axis of the table indexed or
# the position of the ``dim`` argument as ("dim", k))
_GATHERS = {
    aten.embedding.default: (1, 0, 0),
    aten.index_select.default: (2, 0, ("dim", 1)),
    aten.gather.default: (2, 0, ("dim", 1)),
    aten.take.default: (1, 0, None),  # flat index: numel
}
_KEEPS_VALUES = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default, aten.flatten.using_ints,
    aten.expand.default, aten.alias.default, aten.slice.Tensor, aten.select.int,
    aten.permute.default, aten.transpose.int, aten.contiguous.default, aten._to_copy.default,
    aten.to.dtype, aten.detach.default, aten.lift_fresh_copy.default,
}  # fmt: skip


def index_ranges(program) -> dict[str, tuple[int, int]]:
    """``{input name: (0, rows)}`` for every user input used as an index."""
    names = set(program.graph_signature.user_inputs)
    ranges = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            rows = _rows_indexed(node)
            if rows is not None:
                ranges[node.name] = (0, rows)
    return ranges


def _rows_indexed(start: fx.Node) -> int | None:
    rows, frontier, seen = [], [start], {start}
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user.target in _GATHERS:
                rows.append(_table_rows(user, node))
            elif user.target is aten.index.Tensor and node in (user.args[1] or []):
                rows.append(_table_rows_index(user, node))
            elif user.target in _KEEPS_VALUES and user.args[:1] == (node,) and user not in seen:
                seen.add(user)
                frontier.append(user)
    known = [r for r in rows if r is not None]
    return min(known) if known else None


def _table_rows(gather: fx.Node, index: fx.Node) -> int | None:
    index_at, table_at, axis = _GATHERS[gather.target]
    if len(gather.args) <= index_at or gather.args[index_at] is not index:
        return None
    shape = _shape(gather.args[table_at])
    if shape is None:
        return None
    if axis is None:
        return int(torch.Size(shape).numel())
    if isinstance(axis, tuple):
        axis = gather.args[axis[1]] if len(gather.args) > axis[1] else 0
    return int(shape[axis % len(shape)])


def _table_rows_index(user: fx.Node, index: fx.Node) -> int | None:
    shape = _shape(user.args[0])
    position = list(user.args[1]).index(index)
    return int(shape[position]) if shape is not None and position < len(shape) else None


def _shape(node) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None
