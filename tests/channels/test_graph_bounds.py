"""Slices whose bounds are computed in the graph (``x[:, : x.size(1) // 2]``, as BERT's
position ids are sliced to the sequence length) freeze the axis they cut; pruning elsewhere
goes on, and nothing crashes."""

from __future__ import annotations

import torch
from torch import nn

import graphopt
from graphopt.passes import ChannelPruning


class HalfByShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)
        self.c = nn.Linear(4, 3)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.c(y[:, : y.size(1) // 2])


def test_a_graph_computed_slice_bound_freezes_its_axis_and_pruning_goes_on():
    model, x = HalfByShape().eval(), torch.randn(2, 8)
    result = graphopt.optimize(model, x, [ChannelPruning(channel_ratio=0.5, scope="uniform")])
    assert result.model.get_submodule("a").out_features == 8  # the hidden group is pruned
    assert result.model.get_submodule("b").out_features == 8  # the sliced axis is kept
    assert result.model(x).shape == (2, 3)
    reasons = [d.reason for p in result.report.passes for d in p.declined]
    assert any("not basic slicing" in r for r in reasons), reasons
