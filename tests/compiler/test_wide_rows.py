"""Convolutions widened to whole register tiles (compiler/relax/wide_rows.py): which widths and
channel counts are widened, that the extra columns and filters never leave the kernel, and
numbers equal to PyTorch on hypothesis-drawn prime and odd widths, channel counts, strides,
kernels and epilogues."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.relax.wide_rows import MAX_EXTRA, more_channels, wider
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


@given(
    channels=st.integers(1, 600),
    width=st.sampled_from([7, 13, 14, 28, 56]),
    lanes=st.sampled_from([(4, 24), (8, 12), (16, 24)]),
)
def test_channels_grow_to_the_next_whole_vector_or_stay(channels, width, lanes):
    grown = more_channels(width, channels, *lanes)
    assert grown == channels or (grown % lanes[0] == 0 and channels < grown < channels + lanes[0])
    if channels % lanes[0] == 0:
        assert grown == channels


@pytest.mark.parametrize("lanes,budget", [(8, 12), (16, 24)])
def test_channel_counts_with_a_small_power_of_two_are_padded(lanes, budget):
    """ShuffleNet-V2's 58 and 116 filled 2 and 4 of 8 lanes."""
    assert more_channels(14, 58, lanes, budget) == 64
    assert more_channels(14, 116, lanes, budget) == -(-116 // lanes) * lanes


@pytest.mark.tvm
def test_zero_filters_fill_the_vectors_and_never_leave_the_kernel():
    model = nn.Sequential(
        nn.Conv2d(16, 58, 1), nn.ReLU(), nn.Conv2d(58, 58, 3, padding=1, groups=58)
    )
    found = kernels(lowered(model, torch.randn(1, 16, 14, 14)))
    dense = next(f for name, f in found.items() if "conv2d" in name and "slice" in name)
    assert [int(d) for d in dense.params[-1].shape] == [1, 14, 14, 58]
    assert re.match(r"(8|16)/\1 lanes", str(dense.attrs[TILE_ATTR])), dense.attrs[TILE_ATTR]
    depthwise = [name for name in found if "conv2d" in name and "slice" not in name]
    assert len(depthwise) == 1, found  # its input would need the channels too: left alone


class Block(nn.Module):
    def __init__(self, channels, kernel, stride, residual, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, kernel, stride, kernel // 2)
        residual = residual and out_channels == channels
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
    out_channels=st.sampled_from([None, 3, 12, 58]),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    residual=st.booleans(),
)
def test_widened_convolutions_equal_pytorch(
    width, channels, out_channels, kernel, stride, residual
):
    block = Block(channels, kernel, stride, residual, out_channels)
    close_to_pytorch(block, (1, channels, 9, width))
