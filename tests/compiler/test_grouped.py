"""Grouped convolutions split into (group, channel) and reductions whose epilogue broadcasts
(a squeeze-excitation gate): what the kernels look like, and numbers equal to PyTorch on
hypothesis-drawn group counts and widths."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.tir.schedules import SCHEDULE_ATTR, TILE_ATTR, vector_lanes_for
from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered

pytestmark = pytest.mark.tvm


def _conv(model, x):
    return next(f for name, f in kernels(lowered(model.eval(), x)).items() if "conv2d" in name)


def test_a_grouped_convolution_vectorises_the_channels_of_a_group():
    width = vector_lanes_for("llvm")
    # 8 groups of 16 channels: every input value is shared by the 16 channels of its group
    kernel = _conv(nn.Conv2d(128, 128, 3, padding=1, groups=8), torch.randn(1, 128, 14, 14))
    tile = str(kernel.attrs[TILE_ATTR])
    assert tile.startswith(f"{width}/{width} lanes") and "pack param_0" in tile, tile
    # the input channel is g·16 + rc: no floor division left in the multiply-adds
    inputs = re.findall(r"pad_temp\[([^\]]*)\]", kernel.script())
    assert inputs and not any("//" in index for index in inputs), inputs


def test_a_group_narrower_than_a_vector_keeps_what_lanes_it_can():
    # 4 channels per group: vectors of 4 along the group, or of 8 along the width
    kernel = _conv(nn.Conv2d(64, 64, 3, padding=1, groups=16), torch.randn(1, 64, 14, 14))
    assert str(kernel.attrs[SCHEDULE_ATTR]) == "ReductionRule"
    assert "T.parallel(" in kernel.script() and "T.vectorized(" in kernel.script()


@st.composite
def grouped_convs(draw):
    groups = draw(st.sampled_from([2, 3, 4, 8, 16]))
    per_in = draw(st.sampled_from([1, 2, 4, 8]))
    per_out = draw(st.sampled_from([1, 2, 4, 8, 16]))
    kernel = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 2]))
    conv = nn.Conv2d(groups * per_in, groups * per_out, kernel, stride, kernel // 2, groups=groups)
    act = draw(st.sampled_from([nn.ReLU(), nn.SiLU(), nn.Identity()]))
    size = draw(st.sampled_from([5, 7, 12]))
    return nn.Sequential(conv, act), (1, groups * per_in, size, size)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grouped_convs())
def test_grouped_convolutions_equal_pytorch(case):
    model, shape = case
    close_to_pytorch(model, shape)


class SqueezeExcite(nn.Module):
    """x · σ(W₂ relu(W₁ mean(x))) then a projection, as in RegNet-Y and EfficientNet: the
    expanding 1×1 convolution's epilogue broadcasts the gate over the feature map."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, channels, 3, padding=1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.project(x * gate)


def test_a_gate_broadcast_over_a_feature_map_runs_as_its_own_parallel_vector_loop():
    found = kernels(lowered(SqueezeExcite(40, 10).eval(), torch.randn(1, 40, 14, 14)))
    (gate,) = (f for name, f in found.items() if "conv2d" in name and "multiply" in name)
    assert str(gate.attrs[SCHEDULE_ATTR]) == "ReductionRule", gate.attrs
    script = gate.script()
    multiply = script[script.index('T.sblock("T_multiply")') - 400 :]
    assert "T.parallel(" in multiply and "T.vectorized(" in multiply, script
    close_to_pytorch(SqueezeExcite(40, 10), (1, 40, 14, 14))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.sampled_from([8, 24, 40]), squeezed=st.sampled_from([2, 6]))
def test_squeeze_excitation_equals_pytorch(channels, squeezed):
    close_to_pytorch(SqueezeExcite(channels, squeezed), (1, channels, 9, 9))
