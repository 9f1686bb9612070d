"""Cut and repair: prune a copy of the graph, run it, and when a node breaks find the thinned
groups that reach it (the pass then leaves those groups alone and tries again)."""

from __future__ import annotations

import copy

import numpy as np
from torch import fx

from graphopt.analysis.shapes import propagate_shapes, source_location
from graphopt.channels.surgery import prune
from graphopt.errors import CaptureError
from graphopt.ops import meta_items
from graphopt.pass_base import PassContext
from graphopt.passes.compress.channel_pruning.budget import GroupPlan


def removed_elements(plans: list[GroupPlan], selection: dict[int, np.ndarray]):
    removed = {}
    for plan in plans:
        chosen = selection.get(plan.group.index, np.empty(0, dtype=np.int64))
        for dim in plan.group.dims:
            removed[dim] = plan.group.removed_indices(dim, chosen)
    return removed


def try_prune(gm: fx.GraphModule, removed, ctx: PassContext):
    """Prune a copy and run it; return (copy, None) or (None, (failing node, error)).

    The copy shares ``gm``'s tensors: surgery replaces the tensors it cuts and never writes
    into one, so only the graph and the modules are copied (``gm`` is the pass's own copy)."""
    candidate = copy.deepcopy(gm, memo=_shared_tensors(gm))
    prune(candidate, removed)
    try:
        propagate_shapes(candidate, ctx.example_inputs)
    except CaptureError as exc:
        return None, (exc.node, str(exc.__cause__ or exc).splitlines()[0][:300])
    return candidate, None


def _node_named(gm: fx.GraphModule, name: str | None) -> fx.Node | None:
    return next((n for n in gm.graph.nodes if n.name == name), None)


def location_of(gm: fx.GraphModule, name: str | None) -> str | None:
    node = _node_named(gm, name)
    return source_location(node) if node is not None else None


def groups_at(node_name: str | None, gm: fx.GraphModule, plans, selection) -> list[GroupPlan]:
    """The thinned groups with a dim on the failing node or on its inputs."""
    node = _node_named(gm, node_name)
    if node is None:
        return []
    nearby = [node, *tensor_ancestors(node)]
    names = {n.name for n in nearby}
    owners = {str(n.target) for n in nearby if n.op in ("call_module", "get_attr")}
    return [
        p
        for p in plans
        if len(selection.get(p.group.index, ()))
        and any(
            d.owner in names or d.owner.rpartition(".")[0] in owners or d.owner in owners
            for d in p.group.dims
        )
    ]


def tensor_ancestors(node: fx.Node) -> list[fx.Node]:
    """Inputs of ``node``, looking through size arithmetic (``x.shape[3] // 2``) to tensors."""
    found, stack, seen = [], list(node.all_input_nodes), set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if meta_items(current):
            found.append(current)
        else:
            stack.extend(current.all_input_nodes)
    return found


def _shared_tensors(gm: fx.GraphModule) -> dict[int, object]:
    """A deepcopy memo that maps every parameter and buffer of ``gm`` to itself."""
    tensors = [*gm.parameters(), *gm.buffers()]
    return {id(t): t for t in tensors}
