"""What a handler may read and write: the coupling context (links, freezes, blocks on the
channel graph) and the surgery context (shapes before surgery, what each dim lost)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import fx, nn

from graphopt.ops.dims import Dim, meta_items, node_arg, value_dim

if TYPE_CHECKING:
    from graphopt.channels.graph import ChannelGraph


class CouplingContext:
    """What a handler's ``couple`` may read (shapes, modules, arguments) and write."""

    def __init__(self, cg: ChannelGraph, node: fx.Node) -> None:
        self.cg, self.node, self.gm = cg, node, cg.gm

    @property
    def module(self) -> nn.Module:
        return self.gm.get_submodule(self.node.target)

    def arg(self, index: int, name: str, default: object = None) -> object:
        return node_arg(self.node, index, name, default)

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
        dim = value_dim(node, axis, None if node.op == "get_attr" else item)
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


class SurgeryContext:
    """Old shapes (recorded before surgery) and what was removed from (or the new element
    sources of) each dim."""

    def __init__(
        self,
        gm: fx.GraphModule,
        removed: dict[Dim, np.ndarray],
        sources: dict[Dim, np.ndarray] | None = None,
    ) -> None:
        self.gm = gm
        self.removed = removed
        self.sources = sources or {}

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def dropped(self, node: fx.Node, axis: int, item: int | None = None) -> np.ndarray:
        rank = len(self.old_shape(node, item))
        dim = value_dim(node, axis % rank, item)
        return self.removed.get(dim, np.empty(0, dtype=np.int64))

    def old_shape(self, node: fx.Node, item: int | None = None) -> tuple[int, ...]:
        return tuple(dict(meta_items(node))[item].shape)

    def new_shape(self, node: fx.Node, item: int | None = None) -> tuple[int, ...]:
        sizes = []
        for axis, size in enumerate(self.old_shape(node, item)):
            source = self.sources.get(value_dim(node, axis, item))
            sizes.append(
                len(source) if source is not None else size - len(self.dropped(node, axis, item))
            )
        return tuple(sizes)
