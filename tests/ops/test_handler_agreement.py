"""Every op handler's four facets agree on generated instances of its op.

For each example of each handler: capture it, thin every prunable channel group by half,
predict the MACs with the budget model (the handlers' MAC terms scaled by kept fractions)
and the new size of every value and parameter dim from the coupling, then cut with the
surgery (the handlers' updates), run the result, and check the predictions: the coupling
found every dim the cut changes, the updates left a graph that runs with those sizes, and the
MAC terms scale with exactly the dims that shrank.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.analysis.cost import model_stats
from graphopt.analysis.shapes import propagate_shapes
from graphopt.channels import build_channel_graph, find_groups
from graphopt.channels.surgery import prune
from graphopt.frontend.fx import capture
from graphopt.ops import OpHandler, all_handlers, handler_for, meta_items
from graphopt.ops.dims import Dim, value_dim
from graphopt.passes.compress.channel_pruning.budget import GroupPlan, MacModel, removed_counts

CASES = [
    pytest.param(handler, index, id=f"{handler.name}-{index}")
    for handler in all_handlers()
    for index in range(len(handler.examples))
]


def test_every_handler_has_an_example():
    missing = [h.name for h in all_handlers() if not h.examples]
    assert not missing, f"handlers without an example instance: {missing}"


@pytest.mark.parametrize(
    "handler",
    [h for h in all_handlers() if type(h).couple is not OpHandler.couple],
    ids=lambda h: h.name,
)
def test_some_example_prunes_through_each_coupling_handler(handler: OpHandler):
    """A handler's examples must exercise its coupling: one of them thins a group that
    reaches the op (examples that only show a refusal do not count)."""
    for example in handler.examples:
        model, inputs = example()
        gm = capture(model, inputs)
        uses = [n for n in gm.graph.nodes if handler_for(gm, n) is handler]
        if any(g.prunable and _touches(g, uses) for g in find_groups(build_channel_graph(gm))):
            return
    pytest.fail(f"no example of {handler.name} has a prunable group through the op")


def _sizes(gm) -> dict[Dim, int]:
    sizes = {}
    for node in gm.graph.nodes:
        for item, meta in meta_items(node):
            for axis, size in enumerate(meta.shape):
                sizes[value_dim(node, axis, item)] = size
    for name, tensor in [*gm.named_parameters(), *gm.named_buffers()]:
        for axis, size in enumerate(tensor.shape):
            sizes[Dim("param", name, axis)] = size
    return sizes


def _touches(group, uses) -> bool:
    """Whether a group has a dim of one of the nodes, their inputs or their modules."""
    owners = {n.name for n in uses} | {a.name for n in uses for a in n.all_input_nodes}
    owners |= {str(n.target) for n in uses if n.op in ("call_module", "get_attr")}
    owners |= {str(a.target) for n in uses for a in n.all_input_nodes if a.op == "get_attr"}
    return any(d.owner in owners or d.owner.rpartition(".")[0] in owners for d in group.dims)


def _halve(groups) -> tuple[list[GroupPlan], dict[int, np.ndarray]]:
    plans, selection = [], {}
    for group in groups:
        counts = {d: np.bincount(group.labels[d], minlength=group.num_channels) for d in group.dims}
        plan = GroupPlan(
            group, np.arange(group.num_channels, dtype=float), group.num_channels - 1, 1, counts
        )
        plans.append(plan)
        selection[group.index] = plan.select(group.num_channels // 2)
    return plans, selection


@pytest.mark.parametrize(("handler", "index"), CASES)
def test_coupling_surgery_and_cost_agree(handler: OpHandler, index: int):
    torch.manual_seed(0)
    model, inputs = handler.examples[index]()
    gm = capture(model, inputs)
    uses = [n for n in gm.graph.nodes if handler_for(gm, n) is handler]
    assert uses, f"the example does not use {handler.name}"
    cg = build_channel_graph(gm)
    groups = [g for g in find_groups(cg) if g.prunable]
    if type(handler).couple is not OpHandler.couple:  # an op that couples, not one that freezes
        reached = [g for g in find_groups(cg) if _touches(g, uses)]
        assert any(g.prunable for g in reached) or any(g.frozen_by for g in reached), (
            f"{handler.name} example {index}: no prunable group reaches the op, none says why"
        )

    plans, selection = _halve(groups)
    predicted_macs = MacModel(gm, cg.sizes).macs(removed_counts(plans, selection))
    before = _sizes(gm)
    removed = {}
    for plan in plans:
        for dim in plan.group.dims:
            removed[dim] = plan.group.removed_indices(dim, selection[plan.group.index])
    expected = {d: s - len(removed.get(d, ())) for d, s in before.items()}

    prune(gm, removed)
    propagate_shapes(gm, inputs)  # raises, naming the node, if the cut graph cannot run
    after = _sizes(gm)
    wrong = {
        str(d): (expected[d], after[d]) for d in after if d in expected and after[d] != expected[d]
    }
    assert not wrong, f"sizes after surgery differ from the coupling's prediction: {wrong}"
    assert model_stats(gm).macs == pytest.approx(predicted_macs, rel=1e-9, abs=1e-6)
    assert gm(*inputs).shape == model(*inputs).shape
