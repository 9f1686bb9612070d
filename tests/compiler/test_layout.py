"""CPU convolutions run channels-last: what the lowered module looks like, the ReLU6 rewrite
that keeps the clip inside the convolution's kernel, and the NCHW fallback where TVM's
ConvertLayout fails."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered
from tests.models import randomize_batch_norm

pytestmark = pytest.mark.tvm


def mobile_block() -> nn.Module:
    """Inverted residual: expand (1×1, ReLU6), depthwise (3×3, ReLU6), project (1×1)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(8, 24, 1), nn.ReLU6(),
                nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU6(),
                nn.Conv2d(24, 8, 1),
            )  # fmt: skip

        def forward(self, x):
            return x + self.body(x)

    return Block()


def test_convolutions_read_nhwc_and_only_the_model_boundary_transposes():
    mod = lowered(mobile_block(), torch.randn(1, 8, 10, 10))
    found = kernels(mod)
    convs = [f.script() for name, f in found.items() if "conv2d" in name]
    assert len(convs) == 3
    assert all("conv2d_nhwc" in s for s in convs)  # TOPI's NHWC compute, NHWC buffers
    transposes = [name for name in found if "transpose" in name]
    assert len(transposes) == 2, transposes  # into NHWC at the input, back at the output


def test_relu6_runs_in_the_convolutions_epilogue():
    found = kernels(lowered(mobile_block(), torch.randn(1, 8, 10, 10)))
    names = [n for n in found if "conv2d" in n]
    assert sum("maximum" in n and "minimum" in n for n in names) == 2, names
    assert not any("clip" in n for n in found)


@pytest.mark.parametrize("shape", [(1, 8, 10, 10), (1, 8, 7, 9)])
def test_a_channels_last_block_equals_pytorch(shape):
    close_to_pytorch(mobile_block(), shape)


def test_hardtanh_bounds_survive_the_rewrite():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardtanh(-0.3, 0.2))
    close_to_pytorch(model, (1, 3, 9, 9))


class PatchTransformer(nn.Module):
    """A conv patch embedding and attention: TVM 0.27's ConvertLayout aborts on this graph."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        y = self.patch(x).flatten(2).transpose(1, 2)
        return self.attn(y, y, y)[0]


def test_where_convert_layout_fails_the_model_keeps_nchw_and_says_so():
    import graphopt

    torch.manual_seed(0)
    model, x = PatchTransformer().eval(), torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = graphopt.compile(model, x, tuning=None)
    assert any("stay NCHW" in str(w.message) for w in caught)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(artifact(x.numpy()), want, atol=1e-4, rtol=1e-4)


def test_a_model_without_convolutions_is_left_alone():
    from graphopt.compiler.relax.layout import channels_last

    mod = lowered_relax(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4))
    assert channels_last(mod).same_as(mod)


def lowered_relax(model: nn.Module, x: torch.Tensor):
    from tvm.relax.frontend.torch import from_exported_program

    from graphopt.compiler.build import export_program

    return from_exported_program(export_program(model.eval(), (x,)), keep_params_as_input=False)


@pytest.mark.parametrize("channels,size,outermost", [(512, 7, True), (32, 28, False)])
def test_large_weights_are_streamed_once_small_ones_stay_in_cache(channels, size, outermost):
    """Weights over the cache budget (512×512×3×3: 9.4 MB) go block by block, each block over
    every output position; small ones (37 KB) let the activations stream instead."""
    from graphopt.compiler.tir.schedules import TILE_ATTR

    model = nn.Conv2d(channels, channels, 3, padding=1)
    found = kernels(lowered(model, torch.randn(1, channels, size, size)))
    tile = next(str(f.attrs[TILE_ATTR]) for name, f in found.items() if "conv2d" in name)
    assert ("vector blocks outermost" in tile) == outermost, tile


def test_a_conv_with_weight_blocks_outermost_equals_pytorch():
    close_to_pytorch(nn.Sequential(nn.Conv2d(384, 384, 3, padding=1), nn.ReLU()), (1, 384, 7, 7))


def test_a_depthwise_tile_reuses_weight_vectors_over_rows_and_pads_its_own_window():
    from graphopt.compiler.tir.schedules import TILE_ATTR

    model = nn.Conv2d(48, 48, 3, padding=1, groups=48)
    found = kernels(lowered(model, torch.randn(1, 48, 28, 28)))
    name, func = next((n, f) for n, f in found.items() if "conv2d" in n)
    rows = int(str(func.attrs[TILE_ATTR]).split(" rows")[0].rsplit(" ", 1)[1])
    assert rows > 1, func.attrs[TILE_ATTR]
    script = func.script()
    # the padding runs inside the tile's parallel loop, not as a pass over the whole input
    assert "pad_temp" in script and script.count("T.parallel") == 1


@pytest.mark.parametrize("stride,size", [(1, 13), (2, 14), (2, 9)])
def test_depthwise_with_per_tile_padding_equals_pytorch(stride, size):
    block = nn.Sequential(nn.Conv2d(40, 40, 3, stride, 1, groups=40), nn.ReLU6())
    close_to_pytorch(block, (1, 40, size, size))


def test_a_grouped_strided_conv_whose_tile_window_is_not_constant_builds_and_equals_pytorch():
    """Found by hypothesis in a clean CI run: its per-tile input window has a clipped, symbolic
    extent, which TVM refused to unroll at build time."""
    close_to_pytorch(nn.Sequential(nn.Conv2d(8, 10, 1, 2, groups=2), nn.ReLU()), (1, 8, 5, 9))


def conv_bn_model() -> nn.Module:
    """conv → BN → ReLU6, depthwise conv → BN (no affine), a conv with bias → BN, and a conv
    whose output feeds both its BN and a residual add (folding must not change that add)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
            self.dw = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                nn.BatchNorm2d(8, affine=False),
            )
            self.biased = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
            self.shared = nn.Conv2d(8, 8, 1, bias=False)
            self.shared_bn = nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.biased(self.dw(self.stem(x)))
            z = self.shared(y)
            return self.shared_bn(z) + z

    return randomize_batch_norm(Net()).eval()


def test_batch_norm_is_folded_into_the_convolutions_before_it():
    found = kernels(lowered(conv_bn_model(), torch.randn(1, 3, 12, 12)))
    convs = sorted(n for n in found if "conv2d" in n)
    assert len(convs) == 4, convs  # folding never duplicates a convolution
    unfolded = [n for n in convs if "multiply" in n]
    # only the convolution whose output the residual add reads too keeps its BatchNorm, as a
    # multiply-add (relax/fold.py), not TVM's subtract, divide, multiply and add
    assert len(unfolded) == 1 and unfolded[0].count("add") == 2, convs
    assert not any("divide" in n or "subtract" in n for n in convs), convs
    assert any("maximum" in n and "minimum" in n for n in convs), convs  # BN + ReLU6 fused in


@pytest.mark.parametrize("shape", [(1, 3, 12, 12), (1, 3, 9, 7)])
def test_folded_batch_norm_equals_pytorch(shape):
    close_to_pytorch(conv_bn_model(), shape)


def test_padding_an_image_unrolls_its_channels_and_parallelises_rows():
    """3 channels fill no vector: the pad loops over rows in parallel, columns in order and
    the channels unrolled (not one parallel loop over every element)."""
    found = kernels(lowered(nn.Conv2d(3, 16, 3, padding=1), torch.randn(1, 3, 32, 30)))
    conv = next(f.script() for name, f in found.items() if "conv2d" in name)
    pad = conv[conv.index("T.parallel") - 80 : conv.index('T.sblock("pad_temp")')]
    assert "T.parallel(T.int64(34))" in pad and "range(T.int64(32))" in pad, pad
    assert "T.unroll(T.int64(3))" in pad, pad


def test_a_pool_pads_each_tiles_window_a_dense_convolution_the_whole_input():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.MaxPool2d(3, 2, padding=1))
    found = kernels(lowered(model, torch.randn(1, 16, 16, 16)))
    pool = next(f.script() for name, f in found.items() if "pool" in name)
    conv = next(f.script() for name, f in found.items() if "conv2d" in name)
    assert "pad_temp" in pool and pool.count("T.parallel") == 1  # pads inside the tile loop
    assert conv.count("T.parallel") == 2  # pads first, in a parallel loop of its own


def test_layout_transposes_vectorise_inside_a_loop_over_the_inputs_contiguous_axis():
    """NHWC → NCHW (the model's output) and back: the vector loop gathers from the lines the
    serial loop around it walks along, not from a new line per element (8× on 112×112×64)."""
    found = kernels(lowered(nn.Conv2d(16, 32, 1), torch.randn(1, 16, 8, 32)))
    transposes = [f.script() for name, f in found.items() if "transpose" in name]
    assert len(transposes) == 2
    for script in transposes:
        lines = [line.strip() for line in script.splitlines()]
        vector = next(i for i, line in enumerate(lines) if "T.vectorized" in line)
        assert lines[vector - 1].startswith("for ax") and "in range(" in lines[vector - 1], script
        assert "T.parallel" in lines[vector - 2], script


def test_batch_norm_is_folded_for_cuda_too():
    """Before dlight schedules it: only the shared convolution keeps its BN, a multiply-add."""
    script = lowered(conv_bn_model(), torch.randn(1, 3, 12, 12), target="cuda").script()
    assert script.count("R.nn.batch_norm(") == 0 and script.count("R.nn.conv2d(") == 4
    assert script.count("R.multiply(") == 1, script
