"""propagate_shapes runs a graph once per state: the same code, tensors and inputs give the
first run's outputs; any change (an in-place weight update, new inputs) runs it again."""

from __future__ import annotations

import torch
from torch import nn

import graphopt
from graphopt.analysis.shapes import propagate_shapes


def _graph():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    return graphopt.capture(model, x), x


def test_a_second_run_of_the_same_state_is_not_repeated():
    gm, x = _graph()
    first = propagate_shapes(gm, (x,))
    assert propagate_shapes(gm, (x,)) is first


def test_an_inplace_weight_change_runs_again():
    gm, x = _graph()
    first = propagate_shapes(gm, (x,))
    with torch.no_grad():
        gm.get_submodule("0").weight.mul_(2)
    again = propagate_shapes(gm, (x,))
    assert again is not first
    assert torch.equal(again, gm(x))


def test_other_inputs_or_code_run_again():
    gm, x = _graph()
    first = propagate_shapes(gm, (x,))
    y = x.clone()
    assert propagate_shapes(gm, (y,)) is not first
    x.add_(1)  # the same tensor, changed in place
    changed = propagate_shapes(gm, (x,))
    assert torch.equal(changed, gm(x))
    relu = next(n for n in gm.graph.nodes if n.target == "2")
    with gm.graph.inserting_after(relu):
        doubled = gm.graph.call_function(torch.mul, (relu, 2.0))
    relu.replace_all_uses_with(doubled, delete_user_cb=lambda user: user is not doubled)
    gm.recompile()
    assert torch.equal(propagate_shapes(gm, (x,)), 2 * changed)


def test_optimize_runs_the_captured_graph_once_before_the_passes():
    """The reference outputs come from capture's shape run, not from a second run."""
    calls = []

    class Counted(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Counted()).eval()
    graphopt.optimize(model, torch.randn(1, 3, 8, 8), [], leaf_types=[Counted])
    assert len(calls) == 1
