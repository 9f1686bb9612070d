"""Property tests: on random graphs built from coupled-channel ops (residual adds, concats,
splits, grouped and depthwise convs, channel pads, shuffles), pruning any channels of any
group keeps the graph valid with the same output shape, and pruning nothing is exact."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.analysis.shapes import propagate_shapes
from graphopt.channels import build_channel_graph, find_groups
from graphopt.channels.surgery import prune
from graphopt.passes import ChannelPruning

BLOCKS = st.sampled_from(
    ["conv", "grouped", "depthwise", "residual", "concat", "split", "pad", "shuffle"]
)


class Block(nn.Module):
    def __init__(self, kind: str, c: int) -> None:
        super().__init__()
        self.kind = kind
        even = c % 2 == 0
        if kind == "conv":
            self.f, self.out = (
                nn.Sequential(nn.Conv2d(c, c + 2, 3, padding=1), nn.BatchNorm2d(c + 2), nn.ReLU()),
                c + 2,
            )
        elif kind == "grouped" and even:
            self.f, self.out = nn.Conv2d(c, c, 3, padding=1, groups=2), c
        elif kind == "depthwise":
            self.f, self.out = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c), 2 * c
        elif kind == "residual":
            self.f, self.out = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)), c
        elif kind == "concat":
            self.f, self.out = nn.Conv2d(c, 3, 1), c + 3
        elif kind == "split" and even:
            self.a, self.b, self.out = nn.Conv2d(c // 2, 2, 1), nn.Conv2d(c // 2, 3, 1), 5
        elif kind == "pad":
            self.f, self.out = nn.Conv2d(c, c + 4, 1), c + 4
        elif kind == "shuffle" and even:
            self.f, self.out = nn.Identity(), c
        else:
            self.kind, self.f, self.out = "conv", nn.Conv2d(c, c, 1), c

    def forward(self, x):
        k = self.kind
        if k == "residual":
            return x + self.f(x)
        if k == "concat":
            return torch.cat([x, self.f(x)], dim=1)
        if k == "split":
            first, second = x.chunk(2, dim=1)
            return torch.cat([self.a(first), self.b(second)], dim=1)
        if k == "pad":
            return self.f(x) + F.pad(x, (0, 0, 0, 0, 2, 2))
        if k == "shuffle":
            b, c, h, w = x.shape
            return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.f(x)


class RandomNet(nn.Module):
    def __init__(self, kinds: list[str]) -> None:
        super().__init__()
        c, blocks = 4, []
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        for kind in kinds:
            blocks.append(Block(kind, c))
            c = blocks[-1].out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


X = torch.randn(2, 3, 6, 6)


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(BLOCKS, min_size=1, max_size=6), seed=st.integers(0, 10_000), data=st.data())
def test_pruning_any_group_keeps_the_graph_valid(kinds, seed, data):
    torch.manual_seed(seed)
    gm = graphopt.capture(RandomNet(kinds).eval(), X)
    groups = [g for g in find_groups(build_channel_graph(gm)) if g.prunable]
    if not groups:
        return
    group = data.draw(st.sampled_from(groups))
    count = data.draw(st.integers(1, group.num_channels - 1))
    channels = np.random.default_rng(seed).choice(group.num_channels, count, replace=False)
    removed = {d: group.removed_indices(d, channels) for d in group.dims}
    if any(len(r) == len(group.labels[d]) for d, r in removed.items()):
        return  # a member would lose every element; the pass never does that
    if group.block_of is not None:
        return  # blocked groups must lose equally per block; covered through the pass below
    pruned = copy.deepcopy(gm)
    prune(pruned, removed)
    out = propagate_shapes(pruned, (X,))
    assert out.shape == (2, 3)


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(BLOCKS, min_size=1, max_size=6),
    seed=st.integers(0, 10_000),
    ratio=st.floats(0.05, 0.8),
    scope=st.sampled_from(["global", "uniform"]),
)
def test_the_pass_prunes_random_graphs(kinds, seed, ratio, scope):
    torch.manual_seed(seed)
    model = RandomNet(kinds).eval()
    result = graphopt.optimize(
        model, X, [ChannelPruning(channel_ratio=ratio, scope=scope, importance="random")], seed=seed
    )
    assert result.model(X).shape == (2, 3)
    assert result.report.after.params <= result.report.before.params


@settings(max_examples=15, deadline=None)
@given(
    kinds=st.lists(BLOCKS, min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    ratio=st.floats(0.05, 0.8),
    mode=st.sampled_from(
        [("output_error", "global"), ("output_error", "uniform"), ("l1", "sensitivity")]
    ),
)
def test_data_aware_pruning_prunes_random_graphs(kinds, seed, ratio, mode):
    torch.manual_seed(seed)
    model = RandomNet(kinds).eval()
    importance, scope = mode
    pruning = ChannelPruning(channel_ratio=ratio, scope=scope, importance=importance)
    batches = [(torch.randn(4, *X.shape[1:]),) for _ in range(2)]
    result = graphopt.optimize(model, X, [pruning], calibration_data=batches, seed=seed)
    assert result.model(X).shape == (2, 3)
    assert result.report.after.params <= result.report.before.params


@settings(max_examples=20, deadline=None)
@given(kinds=st.lists(BLOCKS, min_size=1, max_size=6), seed=st.integers(0, 10_000))
def test_pruning_nothing_is_exact(kinds, seed):
    torch.manual_seed(seed)
    model = RandomNet(kinds).eval()
    gm = graphopt.capture(model, X)
    groups = find_groups(build_channel_graph(gm))
    prune(gm, {d: np.empty(0, dtype=np.int64) for g in groups for d in g.dims})
    with torch.no_grad():
        assert torch.equal(gm(X), model(X))
