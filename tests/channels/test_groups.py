"""Coupled-channel analysis: which dims share channels, with which index maps, and why frozen."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.channels import Dim, build_channel_graph, find_groups
from graphopt.testing.zoo import CifarResNet
from tests.models import ResidualBlock


def groups_of(model, *inputs):
    gm = graphopt.capture(model.eval(), inputs)
    return gm, find_groups(build_channel_graph(gm))


def group_with(groups, dim: Dim):
    return next(g for g in groups if dim in g.labels)


def param(name, axis):
    return Dim("param", name, axis)


def test_residual_add_couples_block_output_with_its_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = ResidualBlock(8)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.block(self.stem(x)))

    _, groups = groups_of(Net(), torch.randn(1, 3, 6, 6))
    stream = group_with(groups, param("stem.weight", 0))
    assert param("block.conv2.weight", 0) in stream.labels
    assert param("block.conv1.weight", 1) in stream.labels
    assert param("head.weight", 1) in stream.labels
    inner = group_with(groups, param("block.conv1.weight", 0))
    assert inner is not stream and param("block.conv2.weight", 1) in inner.labels
    assert stream.prunable and inner.prunable
    # identity maps: channel i of the stem is channel i of conv2's output
    assert np.array_equal(
        stream.labels[param("stem.weight", 0)], stream.labels[param("block.conv2.weight", 0)]
    )


def test_concat_offsets_and_split_back():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.c, self.d = nn.Conv2d(4, 2, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)
            first, second = torch.split(y, [4, 6], dim=1)
            return self.c(first) + self.d(second)

    _, groups = groups_of(Net(), torch.randn(1, 3, 4, 4))
    g = group_with(groups, param("a.weight", 0))  # the concat joins a and b in one group …
    a, b = g.labels[param("a.weight", 0)], g.labels[param("b.weight", 0)]
    assert not set(a) & set(b)  # … but their channels stay distinct
    cat = next(d for d in g.labels if d.owner == "cat" and d.axis == 1)
    assert np.array_equal(g.labels[cat], np.concatenate([a, b]))  # b's j is cat's 4 + j
    assert np.array_equal(g.labels[param("c.weight", 1)], a)
    assert np.array_equal(g.labels[param("d.weight", 1)], b)


def test_depthwise_conv_ties_input_and_output_channels_with_multiplier():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, groups=4, padding=1), nn.Conv2d(8, 2, 1)
    )
    _, groups = groups_of(model, torch.randn(1, 3, 5, 5))
    g = group_with(groups, param("0.weight", 0))
    dw_out = g.labels[param("1.weight", 0)]
    # output channels 2c and 2c+1 belong to input channel c
    assert np.array_equal(dw_out[0::2], g.labels[param("0.weight", 0)])
    assert np.array_equal(dw_out[1::2], g.labels[param("0.weight", 0)])


def test_grouped_conv_declares_equal_removal_per_group():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2, padding=1), nn.Conv2d(8, 2, 1)
    )
    _, groups = groups_of(model, torch.randn(1, 3, 5, 5))
    out = group_with(groups, param("1.weight", 0))
    assert out.block_of is not None and sorted(set(out.block_of.tolist())) == [0, 1]
    inp = group_with(groups, param("0.weight", 0))
    # input channel c and c + 4 use the same weight column: they go together
    labels = inp.labels[param("0.weight", 0)]
    assert np.array_equal(labels[:4], labels[4:])


def test_flatten_before_linear_maps_a_channel_to_a_block_of_features():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    _, groups = groups_of(model, torch.randn(1, 3, 2, 2))
    g = group_with(groups, param("0.weight", 0))
    features = g.labels[param("2.weight", 1)]
    conv = g.labels[param("0.weight", 0)]
    assert np.array_equal(features, np.repeat(conv, 4))


def test_channel_shuffle_is_prunable(torchvision_models):
    from torchvision.models.shufflenetv2 import InvertedResidual

    block = InvertedResidual(24, 24, 1)
    gm, groups = groups_of(block, torch.randn(1, 24, 8, 8))
    branch = group_with(groups, param("branch2.0.weight", 0))
    assert branch.prunable


def test_cifar_pad_shortcut_aligns_stages():
    _, groups = groups_of(CifarResNet(20), torch.randn(1, 3, 32, 32))
    stream = group_with(groups, param("conv1.weight", 0))
    # the option-A shortcut pads 8 zero channels in front: stage-1 channel i is stage-2 channel 8+i
    stage1 = stream.labels[param("layer1.2.conv2.weight", 0)]
    stage2 = stream.labels[param("layer2.0.conv2.weight", 0)]
    assert np.array_equal(stage2[8:24], stage1)
    assert stream.prunable


def test_attention_stream_has_head_blocks():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.embed(x)
            return self.out(h + self.attn(h, h, h, need_weights=False)[0])

    _, groups = groups_of(Encoder(), torch.randn(2, 5, 6))
    stream = group_with(groups, param("embed.weight", 0))
    assert param("attn.in_proj_weight", 0) in stream.labels
    assert param("attn.out_proj.weight", 1) in stream.labels
    assert stream.block_of is not None and len(set(stream.block_of.tolist())) == 4


def test_unknown_op_freezes_what_flows_through_it_and_says_which():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1))

    _, groups = groups_of(Net(), torch.randn(1, 3, 4, 4))
    g = group_with(groups, param("a.weight", 0))
    assert not g.prunable
    assert any("no channel rule for torch.cumsum" in reason for reason in g.frozen_by)


def test_model_output_and_input_are_frozen():
    _, groups = groups_of(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(2, 4)
    )
    assert not group_with(groups, param("2.weight", 0)).prunable
    assert not group_with(groups, param("0.weight", 1)).prunable
    assert group_with(groups, param("0.weight", 0)).prunable


def test_squeeze_excitation_gate_couples_with_the_gated_tensor():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x):
            y = self.conv(x)
            gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
            return self.head(y * gate)

    _, groups = groups_of(SE(), torch.randn(1, 3, 4, 4))
    g = group_with(groups, param("conv.weight", 0))
    assert param("fc2.weight", 0) in g.labels and param("fc1.weight", 1) in g.labels


def test_conv_transpose_and_scaled_dot_product_attention():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 6, 2, stride=2)
            self.q, self.k, self.v = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            t = self.up(x).flatten(2).transpose(1, 2)  # tokens × 6 channels
            return self.out(F.scaled_dot_product_attention(self.q(t), self.k(t), self.v(t)))

    _, groups = groups_of(Net(), torch.randn(1, 3, 2, 2))
    up = group_with(groups, param("up.weight", 1))
    assert param("q.weight", 1) in up.labels and up.prunable
    qk = group_with(groups, param("q.weight", 0))
    assert param("k.weight", 0) in qk.labels and qk.prunable
    v = group_with(groups, param("v.weight", 0))
    assert param("out.weight", 1) in v.labels and v is not qk
