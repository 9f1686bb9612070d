"""Dims: one axis of a node's value (or of one item of a tuple value) or of a parameter. The
channel graph links dims; handlers name them in their MAC terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata


@dataclass(frozen=True, order=True)
class Dim:
    """One axis of a node's value (``item`` set for tuple outputs) or of a parameter/buffer."""

    kind: str  # "value" or "param"
    owner: str  # node name, or the parameter's qualified name
    axis: int
    item: int | None = None

    def __str__(self) -> str:
        item = f"[{self.item}]" if self.item is not None else ""
        return f"{self.owner}{item}.dim{self.axis}"


def meta_items(node: fx.Node) -> list[tuple[int | None, TensorMetadata]]:
    """``[(None, meta)]`` for a tensor value, ``[(i, meta_i), …]`` for a tuple of tensors."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return [(None, meta)]
    if isinstance(meta, (tuple, list)):
        return [(i, m) for i, m in enumerate(meta) if isinstance(m, TensorMetadata)]
    return []


def is_tuple_value(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata)


def numel(node: object) -> int:
    """Elements of a node's one recorded tensor value (0 when it has none, or a tuple)."""
    items = meta_items(node) if isinstance(node, fx.Node) else []
    return math.prod(items[0][1].shape) if len(items) == 1 and items[0][0] is None else 0


def node_arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    """Argument ``index`` of a call, or its keyword ``name``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def value_dim(node: fx.Node, axis: int, item: int | None = None) -> Dim:
    """The channel-graph dim of a node's value (or of the parameter a get_attr reads)."""
    if node.op == "get_attr":
        return Dim("param", str(node.target), axis, item)
    return Dim("value", node.name, axis, item)


def output_dims(node: fx.Node) -> list[Dim]:
    """Every axis of every tensor the node produces."""
    return [value_dim(node, a, item) for item, m in meta_items(node) for a in range(len(m.shape))]
