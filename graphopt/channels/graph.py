"""The channel graph: nodes are tensor and parameter dims, edges say "index i here is j there".

A *dim* is one axis of one value (a node's output, or one item of a tuple output) or of one
parameter/buffer. Op handlers (:mod:`graphopt.ops`) link dims with element maps; connected
components of dims are the pruning *groups*. Inside a group, elements linked (transitively) to each other form one
*channel*: removing that channel removes each of its elements from its dim, so every member
stays consistent. A group is frozen when any member is frozen, with the reasons kept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import fx

from graphopt.ops.base import UNKNOWN, handler_for, tensor_inputs
from graphopt.ops.context import CouplingContext
from graphopt.ops.dims import Dim, meta_items


@dataclass
class ChannelGraph:
    """Dims (with sizes), links between them (element maps) and frozen dims (with reasons)."""

    gm: fx.GraphModule
    sizes: dict[Dim, int] = field(default_factory=dict)
    graph: nx.Graph = field(default_factory=nx.Graph)
    frozen: dict[Dim, list[str]] = field(default_factory=lambda: defaultdict(list))
    blocks: dict[Dim, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    # (a, b) -> list of (indices into a, indices into b); both directions stored once
    maps: dict[tuple[Dim, Dim], list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def add_dim(self, dim: Dim, size: int) -> None:
        if dim not in self.sizes:
            self.sizes[dim] = size
            self.graph.add_node(dim)

    def link(self, a: Dim, b: Dim, ia: np.ndarray | None = None, ib: np.ndarray | None = None):
        """Element ``ia[k]`` of ``a`` is the same channel as element ``ib[k]`` of ``b``."""
        if ia is None:
            if self.sizes[a] != self.sizes[b]:
                raise ValueError(
                    f"identity link between {a} ({self.sizes[a]}) and {b} ({self.sizes[b]})"
                )
            ia = ib = np.arange(self.sizes[a])
        self.graph.add_edge(a, b)
        self.maps.setdefault((a, b), []).append((np.asarray(ia), np.asarray(ib)))

    def freeze(self, dim: Dim, reason: str) -> None:
        self.frozen[dim].append(reason)

    def require_blocks(self, dim: Dim, count: int, reason: str) -> None:
        """Removals from ``dim`` must take equally from its ``count`` contiguous blocks."""
        self.blocks[dim].append((count, reason))


@dataclass
class ChannelGroup:
    """A connected set of dims; ``labels[dim][i]`` is the channel of element ``i``."""

    index: int
    dims: list[Dim]
    labels: dict[Dim, np.ndarray]
    num_channels: int
    frozen_by: list[str]
    block_of: np.ndarray | None  # block id per channel (-1: unconstrained), or None

    @property
    def params(self) -> list[Dim]:
        return [d for d in self.dims if d.kind == "param"]

    @property
    def prunable(self) -> bool:
        return not self.frozen_by and bool(self.params) and self.num_channels > 1

    def removed_indices(self, dim: Dim, channels: np.ndarray) -> np.ndarray:
        """Element indices of ``dim`` that go when ``channels`` are removed."""
        return np.flatnonzero(np.isin(self.labels[dim], channels))


def find_groups(cg: ChannelGraph) -> list[ChannelGroup]:
    """Connected components of dims, with their channels (element components)."""
    offsets, total = {}, 0
    for dim, size in cg.sizes.items():
        offsets[dim] = total
        total += size
    rows, cols = [np.arange(total)], [np.arange(total)]
    for (a, b), pairs in cg.maps.items():
        for ia, ib in pairs:
            rows.append(ia + offsets[a])
            cols.append(ib + offsets[b])
    r, c = np.concatenate(rows), np.concatenate(cols)
    matrix = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    _, element_label = connected_components(matrix, directed=False)
    groups = []
    for index, component in enumerate(nx.connected_components(cg.graph)):
        dims = sorted(component)
        groups.append(_make_group(cg, index, dims, offsets, element_label))
    return groups


def _make_group(cg, index, dims, offsets, element_label) -> ChannelGroup:
    raw = {d: element_label[offsets[d] : offsets[d] + cg.sizes[d]] for d in dims}
    unique, inverse = np.unique(np.concatenate(list(raw.values())), return_inverse=True)
    labels, start = {}, 0
    for d in dims:
        labels[d] = inverse[start : start + cg.sizes[d]]
        start += cg.sizes[d]
    frozen_by = [f"{d}: {r}" for d in dims for r in cg.frozen.get(d, [])]
    block_of, conflict = _blocks(cg, dims, labels, len(unique))
    if conflict:
        frozen_by.append(conflict)
    return ChannelGroup(index, dims, labels, len(unique), frozen_by, block_of)


def _blocks(cg, dims, labels, n) -> tuple[np.ndarray | None, str | None]:
    """Block id per channel from every block requirement; a conflict freezes the group."""
    block_of = None
    for d in dims:
        for count, reason in cg.blocks.get(d, []):
            size = cg.sizes[d]
            if size % count:
                return None, f"{d}: {size} channels do not split into {count} blocks ({reason})"
            ids = np.full(n, -1)
            element_block = np.arange(size) // (size // count)
            for channel, block in zip(labels[d], element_block, strict=True):
                if ids[channel] not in (-1, block):
                    return None, f"{d}: a channel spans two blocks ({reason})"
                ids[channel] = block
            if block_of is None:
                block_of = ids
            elif not _same_partition(block_of, ids):
                return None, f"{d}: block structure conflicts with another member ({reason})"
    return block_of, None


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    both = (a >= 0) & (b >= 0)
    pairs = set(zip(a[both].tolist(), b[both].tolist(), strict=True))
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


def build_channel_graph(gm: fx.GraphModule) -> ChannelGraph:
    """Ask each node's op handler what it couples; ops without one freeze what they touch."""
    cg = ChannelGraph(gm)
    for node in gm.graph.nodes:
        _couple(cg, node)
    return cg


def _couple(cg: ChannelGraph, node: fx.Node) -> None:
    ctx = CouplingContext(cg, node)
    if node.op == "placeholder":
        ctx.freeze_value(node, "model input")
        return
    if node.op == "output":
        for source in tensor_inputs(node):
            ctx.freeze_value(source, "model output")
        return
    if node.op == "get_attr" or not any(meta_items(n) for n in [node, *tensor_inputs(node)]):
        return
    handler = handler_for(cg.gm, node)
    handler.couple(ctx, node)
    if handler is not UNKNOWN:  # the unknown op froze everything already
        _freeze_unexplained_outputs(ctx)


def _freeze_unexplained_outputs(ctx: CouplingContext) -> None:
    """An output axis no link explains has a size set by something other than a parameter
    (e.g. the input's spatial size): removing indices from it could not be done by slicing."""
    for item, m in meta_items(ctx.node):
        for axis in range(len(m.shape)):
            dim = ctx.out(axis, item)
            if ctx.cg.graph.degree(dim) == 0:
                ctx.freeze(dim, f"size of {dim} is not set by any parameter")
