"""Surgery: remove chosen channels physically (smaller tensors, updated modules and args).

``prune(gm, removed)`` takes, for each dim, the element indices to drop (as computed from the
channel groups), slices every parameter/buffer dim, then lets per-module updaters fix module
attributes (``in_channels``, ``normalized_shape``, …) and per-op updaters fix literal sizes in
node arguments (``view(…, 64, …)``, ``F.pad`` widths, slice bounds, split sizes).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.channels.graph import Dim
from graphopt.channels.rules import meta_items, op_key

Removed = dict[Dim, np.ndarray]
Sources = dict[Dim, np.ndarray]  # new element k of a dim is old element sources[dim][k]
ModuleUpdater = Callable[[nn.Module, fx.Node, "SurgeryContext"], None]
NodeUpdater = Callable[[fx.Node, "SurgeryContext"], None]

MODULE_UPDATERS: dict[type[nn.Module], ModuleUpdater] = {}
NODE_UPDATERS: dict[object, NodeUpdater] = {}


def updates(*keys: object):
    def decorate(fn):
        for key in keys:
            if isinstance(key, type) and issubclass(key, nn.Module):
                MODULE_UPDATERS[key] = fn
            else:
                NODE_UPDATERS[key] = fn
        return fn

    return decorate


class SurgeryContext:
    """Old shapes (recorded before surgery) and what was removed from (or the new element
    sources of) each dim."""

    def __init__(self, removed: Removed, sources: Sources | None = None) -> None:
        self.removed = removed
        self.sources = sources or {}

    def dropped(self, node: fx.Node, axis: int, item: int | None = None) -> np.ndarray:
        rank = len(self.old_shape(node, item))
        dim = _dim_of(node, axis % rank, item)
        return self.removed.get(dim, np.empty(0, dtype=np.int64))

    def old_shape(self, node: fx.Node, item: int | None = None) -> tuple[int, ...]:
        return tuple(dict(meta_items(node))[item].shape)

    def new_shape(self, node: fx.Node, item: int | None = None) -> tuple[int, ...]:
        sizes = []
        for axis, size in enumerate(self.old_shape(node, item)):
            source = self.sources.get(_dim_of(node, axis, item))
            sizes.append(
                len(source) if source is not None else size - len(self.dropped(node, axis, item))
            )
        return tuple(sizes)


def _dim_of(node: fx.Node, axis: int, item: int | None) -> Dim:
    """The channel-graph dim of a node's value (or of the parameter a get_attr reads)."""
    if node.op == "get_attr":
        return Dim("param", str(node.target), axis, item)
    return Dim("value", node.name, axis, item)


def prune(gm: fx.GraphModule, removed: Removed) -> None:
    """Remove ``removed[dim]`` elements from every dim, in place; recompiles ``gm``."""
    ctx = SurgeryContext({d: np.asarray(i) for d, i in removed.items() if len(i)})
    _slice_tensors(gm, ctx)
    _update_modules_and_args(gm, ctx)


def resize(gm: fx.GraphModule, sources: Sources, mixes: dict[Dim, np.ndarray] | None = None):
    """Rebuild dims from old elements, in place: element ``k`` of ``dim`` becomes old element
    ``sources[dim][k]`` (repeats allowed: Net2Net widening). A parameter dim given a matrix
    ``mixes[dim]`` (old size × new size) becomes ``old @ mix`` along that axis instead (split
    or summed columns). Only module attributes and reshape-like literal sizes are updated:
    slice bounds and pad widths assume removal, so callers verify the result."""
    ctx = SurgeryContext({}, {d: np.asarray(s) for d, s in sources.items()})
    _gather_tensors(gm, ctx.sources, mixes or {})
    _update_modules_and_args(gm, ctx)


def _update_modules_and_args(gm: fx.GraphModule, ctx: SurgeryContext) -> None:
    for node in list(gm.graph.nodes):
        key = op_key(gm, node) if node.op.startswith("call_") else None
        if node.op == "call_module":
            updater = _module_updater(type(gm.get_submodule(node.target)))
            if updater is not None:
                updater(gm.get_submodule(node.target), node, ctx)
        elif key in NODE_UPDATERS:
            NODE_UPDATERS[key](node, ctx)
    gm.graph.lint()
    gm.recompile()


def _module_updater(module_type: type) -> ModuleUpdater | None:
    for cls in module_type.__mro__:
        if cls in MODULE_UPDATERS:
            return MODULE_UPDATERS[cls]
    return None


def _slice_tensors(gm: fx.GraphModule, ctx: SurgeryContext) -> None:
    """Removal is a gather of the kept elements."""
    kept = {}
    for dim, indices in ctx.removed.items():
        if dim.kind == "param":
            parent, _, attr = dim.owner.rpartition(".")
            size = getattr(gm.get_submodule(parent), attr).shape[dim.axis]
            kept[dim] = np.setdiff1d(np.arange(size), indices)
    _gather_tensors(gm, kept, {})


def _gather_tensors(gm: fx.GraphModule, sources: Sources, mixes) -> None:
    per_tensor: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for dim, source in sources.items():
        if dim.kind == "param":
            per_tensor[dim.owner].append((dim.axis, mixes.get(dim, source)))
    for name, changes in per_tensor.items():
        parent_name, _, attr = name.rpartition(".")
        parent = gm.get_submodule(parent_name)
        tensor = getattr(parent, attr)
        with torch.no_grad():
            new = tensor.detach()
            for axis, change in changes:
                if change.ndim == 2:  # a mixing matrix
                    mix = torch.as_tensor(change, dtype=new.dtype, device=new.device)
                    new = (new.movedim(axis, -1) @ mix).movedim(-1, axis)
                else:
                    new = new.index_select(axis, torch.as_tensor(change, device=new.device))
            new = new.clone()
        if isinstance(tensor, nn.Parameter):
            setattr(parent, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(parent, attr, new)


# ---------------------------------------------------------------- module attributes


@updates(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Module, node: fx.Node, ctx: SurgeryContext) -> None:
    new_in = ctx.new_shape(node.args[0])[1]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise
        m.groups = new_in
    m.in_channels, m.out_channels = new_in, m.weight.shape[0]


@updates(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.Module, node: fx.Node, ctx: SurgeryContext) -> None:
    m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


@updates(nn.Linear)
def _linear(m: nn.Linear, node: fx.Node, ctx: SurgeryContext) -> None:
    m.out_features, m.in_features = m.weight.shape


@updates(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
def _batch_norm(m: nn.Module, node: fx.Node, ctx: SurgeryContext) -> None:
    m.num_features = ctx.new_shape(node)[1]


@updates(nn.GroupNorm)
def _group_norm(m: nn.GroupNorm, node: fx.Node, ctx: SurgeryContext) -> None:
    m.num_channels = ctx.new_shape(node)[1]


@updates(nn.LayerNorm)
def _layer_norm(m: nn.LayerNorm, node: fx.Node, ctx: SurgeryContext) -> None:
    m.normalized_shape = ctx.new_shape(node)[-len(m.normalized_shape) :]


@updates(nn.PReLU)
def _prelu(m: nn.PReLU, node: fx.Node, ctx: SurgeryContext) -> None:
    m.num_parameters = m.weight.numel()


@updates(nn.MultiheadAttention)
def _mha(m: nn.MultiheadAttention, node: fx.Node, ctx: SurgeryContext) -> None:
    embed = m.in_proj_weight.shape[1]
    m.embed_dim = m.kdim = m.vdim = embed
    m.head_dim = embed // m.num_heads
    m.out_proj.in_features = m.out_proj.out_features = embed


# ---------------------------------------------------------------- literal sizes in args

T = torch.Tensor


@updates(T.view, T.reshape, torch.reshape, T.expand)
def _sizes(node: fx.Node, ctx: SurgeryContext) -> None:
    """Literal sizes follow the new shape (``-1`` and computed sizes are left alone)."""
    new = ctx.new_shape(node)
    packed = node.op == "call_function" or (
        len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    )
    sizes = list(node.args[1] if packed else node.args[1:])
    sizes = [new[a] if isinstance(s, int) and s != -1 else s for a, s in enumerate(sizes)]
    node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)


@updates(F.layer_norm)
def _functional_layer_norm(node: fx.Node, ctx: SurgeryContext) -> None:
    k = len(node.args[1])
    node.args = (node.args[0], list(ctx.new_shape(node)[-k:]), *node.args[2:])


@updates(F.pad)
def _pad(node: fx.Node, ctx: SurgeryContext) -> None:
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


@updates(operator.getitem)
def _getitem(node: fx.Node, ctx: SurgeryContext) -> None:
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
        if isinstance(item, slice) and item != slice(None) and len(ctx.dropped(source, in_axis)):
            start, stop, _ = item.indices(ctx.old_shape(source)[in_axis])
            dropped = ctx.dropped(source, in_axis)
            new_start = start - int(np.sum(dropped < start))
            new_stop = stop - int(np.sum(dropped < stop))
            items[k] = slice(new_start, new_stop, item.step)
            changed = True
        in_axis += item is not Ellipsis
    if changed:
        node.args = (source, tuple(items) if isinstance(index, tuple) else items[0])


@updates(torch.split, torch.chunk, T.split, T.chunk)
def _split(node: fx.Node, ctx: SurgeryContext) -> None:
    """Splits become ``torch.split`` with the new section sizes."""
    x = node.args[0]
    rank = len(ctx.old_shape(x))
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % rank
    sizes = [ctx.new_shape(node, item)[dim] for item, _ in meta_items(node)]
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (x, sizes), {"dim": dim}
