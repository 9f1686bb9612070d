"""Pointwise convolutions over their pixels as one row (compiler/relax/wide_rows.py
``flattened``) and the element-wise epilogue moved inside the reshape back
(compiler/relax/sink_reshape.py): which shapes are flattened, the Relax graph and the fused
kernels they give, and numbers equal to PyTorch on hypothesis-drawn maps, channel counts and
epilogues."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.relax.wide_rows import flattened
from graphopt.compiler.tir.schedules import TILE_ATTR
from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered

AVX2, AVX512 = (8, 12), (16, 24)


def test_a_seven_by_seven_map_is_one_row_of_49_pixels_on_avx2():
    """7 columns allow tiles of 1 × 7 (7 of 12 accumulators); 49 pixels widened to 54: 2 × 6."""
    for channels in (64, 96, 400, 512, 2048):
        assert flattened(7, 7, channels, *AVX2)


@pytest.mark.parametrize("lanes", [AVX2, AVX512])
@pytest.mark.parametrize("size", [28, 56, 112])
def test_maps_whose_width_tiles_well_keep_their_rows(lanes, size):
    for channels in (64, 128, 256):
        assert not flattened(size, size, channels, *lanes)


def test_a_map_of_one_row_is_not_flattened():
    assert not flattened(1, 7, 96, *AVX2)


class Pointwise(nn.Module):
    """1×1 conv → (BN) → (+ residual) → activation: the epilogues that must stay fused."""

    def __init__(self, channels, out_channels, bn, residual, activation):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self.residual = residual and channels == out_channels
        self.activation = activation

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.activation(y + x if self.residual else y)


def _relax(model, x, lanes, budget):
    """The channels-last Relax module of ``model`` after the wide-rows and sinking passes."""
    from tvm.relax.frontend.torch import from_exported_program

    from graphopt.compiler.build import export_program
    from graphopt.compiler.relax.fold import fold_batch_norm
    from graphopt.compiler.relax.layout import channels_last
    from graphopt.compiler.relax.sink_reshape import sink_reshapes
    from graphopt.compiler.relax.wide_rows import wide_rows

    mod = from_exported_program(export_program(model.eval(), (x,)), keep_params_as_input=False)
    mod = channels_last(fold_batch_norm(mod))
    return sink_reshapes()(wide_rows(lanes, budget)(mod))


@pytest.mark.tvm
def test_the_epilogue_runs_on_the_row_and_one_reshape_brings_the_map_back():
    model = Pointwise(96, 96, bn=True, residual=True, activation=torch.relu)
    text = _relax(model, torch.randn(1, 96, 7, 7), *AVX2)["main"].script()
    (conv,) = re.findall(r"R\.nn\.conv2d\((\w+),", text)
    assert re.search(rf"{conv}[^\n]*= R\.reshape\(\w+, R\.shape\(\[1, 1, 49, 96\]\)\)", text)
    # bias, residual and ReLU on [1, 1, 49, 96] (the widened 54 columns cropped first) ...
    for op in ("R.add", "R.nn.relu"):
        assert re.search(rf"R\.Tensor\(\(1, 1, 49, 96\)[^\n]*= {re.escape(op)}\(", text), op
    # ... and no element-wise op on the 7 × 7 map
    assert not re.search(r"R\.Tensor\(\(1, 7, 7, 96\)[^\n]*= R\.(add|nn\.relu)\(", text)


@pytest.mark.tvm
def test_a_per_row_operand_keeps_the_map():
    """An operand that varies along the rows (not a bias) cannot follow the pixels' order."""
    from tvm import relax

    from graphopt.compiler.relax.sink_reshape import sink_reshapes

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 1, 49, 8), "float32"))
    rows = relax.Var("rows", relax.TensorType((1, 7, 1, 8), "float32"))
    with bb.function("main", [a, rows]):
        with bb.dataflow():
            full = bb.emit(relax.op.reshape(a, (1, 7, 7, 8)))
            out = bb.emit_output(relax.op.add(full, rows))
        bb.emit_func_output(out)
    text = sink_reshapes()(bb.get())["main"].script()
    assert re.search(r"R\.Tensor\(\(1, 7, 7, 8\)[^\n]*= R\.add\(", text), text


def _flattening_case(lanes: int, budget: int) -> tuple[int, int]:
    """(size, channels) of a square map the host's tile model flattens."""
    for size in (7, 4, 13, 14):
        for channels in (96, 64, 512):
            if flattened(size, size, channels, lanes, budget):
                return size, channels
    raise AssertionError("no candidate map is flattened on this host")


@pytest.mark.tvm
def test_the_flattened_kernel_writes_the_map_with_its_epilogue_fused():
    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.schedules.tiles import lanes, registers

    target = resolve_target("llvm").tvm()
    size, channels = _flattening_case(lanes(target), registers(target))
    model = Pointwise(channels, channels, bn=True, residual=True, activation=torch.relu)
    found = kernels(lowered(model, torch.randn(1, channels, size, size)))
    (conv,) = [f for name, f in found.items() if "conv2d" in name]
    name = next(n for n, f in found.items() if f.same_as(conv))
    assert "add" in name and "relu" in name, found  # the epilogue is in the kernel
    assert [int(d) for d in conv.params[-1].shape] == [1, 1, size * size, channels]
    rows = int(re.search(r"x (\d+) rows", str(conv.attrs[TILE_ATTR])).group(1))
    assert rows > 1 and rows != size, conv.attrs[TILE_ATTR]


@pytest.mark.tvm
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([(7, 7), (4, 4), (5, 3), (13, 13)]),
    channels=st.sampled_from([16, 24, 40]),
    out_channels=st.sampled_from([None, 12, 58, 96]),
    bn=st.booleans(),
    residual=st.booleans(),
    activation=st.sampled_from([torch.relu, torch.sigmoid, nn.functional.hardswish]),
)
def test_pointwise_convolutions_equal_pytorch(
    size, channels, out_channels, bn, residual, activation
):
    model = Pointwise(channels, out_channels or channels, bn, residual, activation)
    close_to_pytorch(model, (1, channels, *size))
