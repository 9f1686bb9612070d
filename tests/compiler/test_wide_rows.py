"""Convolutions widened to whole register tiles (compiler/relax/wide_rows.py): which widths are
widened, that the extra columns never leave the kernel, and numbers equal to PyTorch on
hypothesis-drawn prime and odd widths, strides, kernels and epilogues."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.relax.wide_rows import MAX_EXTRA, wider
from graphopt.compiler.tir.schedules import TILE_ATTR
from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered


@pytest.mark.parametrize("lanes,budget", [(8, 12), (16, 24)])
def test_a_prime_width_is_widened_to_one_with_a_full_tile(lanes, budget):
    for width in (13, 17, 23):
        w = wider(width, 384, lanes, budget)
        assert width < w <= width * (1 + MAX_EXTRA)


@pytest.mark.parametrize("width", [7, 8, 14, 28, 56, 112])
def test_widths_with_good_divisors_are_kept(width):
    assert wider(width, 64, 8, 12) == width
    assert wider(width, 64, 16, 24) == width


class Block(nn.Module):
    def __init__(self, channels, kernel, stride, residual):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2)
        self.residual = residual and stride == 1

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y + x if self.residual else y)


@pytest.mark.tvm
def test_the_extra_columns_are_computed_in_registers_and_never_stored():
    (kernel,) = (
        f
        for name, f in kernels(lowered(Block(96, 3, 1, True), torch.randn(1, 96, 13, 13))).items()
        if "conv2d" in name
    )
    tile = str(kernel.attrs[TILE_ATTR])
    assert int(re.search(r"x (\d+) rows", tile).group(1)) > 1, tile
    # the kernel's output keeps 13 columns; the write-back is predicated to them
    assert [int(d) for d in kernel.params[-1].shape] == [1, 13, 13, 96]
    script = kernel.script()
    assert "T.where" in script
    # the convolution itself runs over the widened columns (a padded input wider than 13 + 2)
    (pad,) = re.findall(r"pad_temp = T\.sblock_alloc_buffer\(\((.*?)\)\)", script)
    assert int(re.findall(r"int64\((\d+)", pad)[2]) > 15, pad


@pytest.mark.tvm
@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.sampled_from([5, 11, 13, 17, 23, 27]),
    channels=st.sampled_from([8, 24, 40]),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    residual=st.booleans(),
)
def test_widened_convolutions_equal_pytorch(width, channels, kernel, stride, residual):
    close_to_pytorch(Block(channels, kernel, stride, residual), (1, channels, 9, width))
