"""Surgery: remove chosen channels physically (smaller tensors, updated modules and args).

``prune(gm, removed)`` takes, for each dim, the element indices to drop (as computed from the
channel groups), slices every parameter/buffer dim, then lets each node's op handler
(``OpHandler.update``) fix module attributes (``in_channels``, ``normalized_shape``, …) and
literal sizes in node arguments (``view(…, 64, …)``, ``F.pad`` widths, slice bounds, split
sizes).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import fx, nn

from graphopt.ops import SurgeryContext, handler_for
from graphopt.ops.dims import Dim

Removed = dict[Dim, np.ndarray]
Sources = dict[Dim, np.ndarray]  # new element k of a dim is old element sources[dim][k]


def prune(gm: fx.GraphModule, removed: Removed) -> None:
    """Remove ``removed[dim]`` elements from every dim, in place; recompiles ``gm``."""
    ctx = SurgeryContext(gm, {d: np.asarray(i) for d, i in removed.items() if len(i)})
    _slice_tensors(gm, ctx)
    _update_modules_and_args(gm, ctx)


def resize(gm: fx.GraphModule, sources: Sources, mixes: dict[Dim, np.ndarray] | None = None):
    """Rebuild dims from old elements, in place: element ``k`` of ``dim`` becomes old element
    ``sources[dim][k]`` (repeats allowed: Net2Net widening). A parameter dim given a matrix
    ``mixes[dim]`` (old size × new size) becomes ``old @ mix`` along that axis instead (split
    or summed columns). Only module attributes and reshape-like literal sizes are updated:
    slice bounds and pad widths assume removal, so callers verify the result."""
    ctx = SurgeryContext(gm, {}, {d: np.asarray(s) for d, s in sources.items()})
    _gather_tensors(gm, ctx.sources, mixes or {})
    _update_modules_and_args(gm, ctx)


def _update_modules_and_args(gm: fx.GraphModule, ctx: SurgeryContext) -> None:
    for node in list(gm.graph.nodes):
        handler_for(gm, node).update(ctx, node)
    gm.graph.lint()
    gm.recompile()


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
