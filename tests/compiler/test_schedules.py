"""graphopt's default CPU schedules: the tile decisions, what the scheduled kernels look like, and
numbers equal to PyTorch on hypothesis-drawn convolutions, matmuls and pools (odd channel counts,
strides, groups, depthwise, dilation, fused epilogues) — a fast kernel is never a wrong one."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.tir.schedules import SCHEDULE_ATTR
from graphopt.compiler.tir.schedules.tiles import VECTOR_LOAD_COST, register_shape, vector_lanes

pytestmark = pytest.mark.tvm


# ------------------------------------------------------------------------- decisions


def test_vector_lanes_are_the_largest_power_of_two_dividing_the_extent():
    assert vector_lanes(56, 16) == 8
    assert vector_lanes(64, 16) == 16
    assert vector_lanes(7, 16) == 1
    assert vector_lanes(96, 4) == 4


@pytest.mark.parametrize("groups_max,rows_max,budget", [(8, 28, 24), (1, 7, 24), (32, 7, 12)])
def test_register_tile_divides_its_loops_and_fits_the_registers(groups_max, rows_max, budget):
    groups, rows = register_shape(groups_max, rows_max, budget)
    assert groups_max % groups == 0 and rows_max % rows == 0
    assert groups * rows <= budget
    # no other fitting tile does more multiply-adds per unit of load cost
    c = VECTOR_LOAD_COST
    assert all(
        g * r / (c * g + r) <= groups * rows / (c * groups + rows) + 1e-12
        for g in range(1, groups_max + 1)
        for r in range(1, rows_max + 1)
        if groups_max % g == 0 and rows_max % r == 0 and g * r <= budget
    )


# -------------------------------------------------------------------------- structure


def lowered(model: nn.Module, x: torch.Tensor, target: str = "llvm"):
    from graphopt.compiler.build import export_program, lower_program
    from graphopt.compiler.targets import resolve_target

    mod, _ = lower_program(export_program(model.eval(), (x,)), resolve_target(target), None)
    return mod


def kernels(mod) -> dict:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def parallel_ir(model: nn.Module, x: torch.Tensor, name_part: str) -> str:
    """LLVM IR of the parallel body of the first kernel whose name holds ``name_part``, built
    through graphopt's pipeline for the host."""
    import tvm

    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.lowering import pipeline_for

    found = kernels(lowered(model.eval(), x))
    name = next(n for n in sorted(found) if name_part in n)
    kernel = tvm.IRModule({"main": found[name].with_attr("global_symbol", "main")})
    target = resolve_target("llvm").tvm()
    source = tvm.tirx.build(kernel, target=target, pipeline=pipeline_for(target))
    source = source.inspect_source("ll")
    return source[source.index("@__tvm_parallel_lambda") :]


def test_every_kernel_of_a_cnn_gets_a_default_schedule_and_weights_are_packed_at_compile_time():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    mod = lowered(model, torch.randn(1, 3, 12, 12))
    found = kernels(mod)
    assert found and all(SCHEDULE_ATTR in (f.attrs or {}) for f in found.values())
    conv = next(f.script() for name, f in found.items() if name.startswith("fused_conv2d_"))
    assert "T.parallel" in conv and "T.vectorized" in conv
    # the regular conv reads its weights repacked along output channels; the repacking ran once
    assert any(name.endswith("_prepacked") for name in found)
    assert not any("weight_prepack" in name for name in found)
    assert "weight_prepack" not in mod["main"].script()


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Sigmoid()])
@pytest.mark.parametrize("layer", ["conv", "depthwise", "linear"])
def test_an_epilogue_reading_its_input_twice_runs_inside_the_parallel_tiles(act, layer):
    """SiLU x·σ(x), GELU, hardswish, and σ (NaN kept: a select on x) fork at the value: each
    kernel is parallel loops only, no serial loop over the whole output after the tiles."""
    import tvm

    first, x = {
        "conv": (nn.Conv2d(8, 16, 3, padding=1), torch.randn(1, 8, 12, 12)),
        "depthwise": (nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.randn(1, 16, 12, 12)),
        "linear": (nn.Linear(32, 48), torch.randn(1, 20, 32)),
    }[layer]
    found = kernels(lowered(nn.Sequential(first, act).eval(), x))
    fused = [f for name, f in found.items() if "conv2d" in name or "matmul" in name]
    assert fused, list(found)
    for kernel in fused:
        body = kernel.body.block.body
        loops = list(body.seq) if isinstance(body, tvm.tirx.SeqStmt) else [body]
        kinds = [getattr(loop, "kind", None) for loop in loops]
        assert all(kind == tvm.tirx.ForKind.PARALLEL for kind in kinds), kernel.script()


def test_round_to_for_a_target_is_its_vector_width():
    from graphopt.compiler import vector_lanes_for

    assert vector_lanes_for("aarch64") == 4
    assert vector_lanes_for("llvm") in (4, 8, 16)


@pytest.mark.parametrize(
    ("mcpu", "lanes", "accumulators"),
    [
        ("znver3", 8, 12),  # AVX2: TVM's llvm_get_vector_width says 512 for it
        ("haswell", 8, 12),
        ("znver4", 16, 24),
        ("skylake-avx512", 16, 24),
        ("x86-64", 4, 12),  # SSE2 only
    ],
)
def test_lanes_and_registers_come_from_the_cpus_features(mcpu, lanes, accumulators):
    from tvm.target import Target

    from graphopt.compiler.tir.schedules.tiles import lanes as lanes_of
    from graphopt.compiler.tir.schedules.tiles import registers

    target = Target({"kind": "llvm", "mcpu": mcpu})
    assert (lanes_of(target), registers(target)) == (lanes, accumulators)


def test_vectors_follow_the_target_neon_gets_four_lanes():
    from graphopt.compiler.tir.schedules import TILE_ATTR

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
    found = kernels(lowered(model, torch.randn(1, 3, 16, 16), target="aarch64"))
    conv = next(f for name, f in found.items() if name.startswith("fused_conv2d"))
    assert str(conv.attrs[TILE_ATTR]).startswith("4/4 lanes")


# ----------------------------------------------------------------------------- numbers


def run_compiled(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    import tvm
    from tvm import relax

    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.lowering import compile_module

    executable = compile_module(lowered(model, x), resolve_target("llvm").tvm())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


class ConvBlock(nn.Module):
    """conv → (BN) → activation (→ + residual), the epilogues the schedules fuse."""

    def __init__(self, cin, cout, kernel, stride, groups, dilation, act, residual, norm):
        super().__init__()
        self.conv = nn.Conv2d(
            cin,
            cout,
            kernel,
            stride,
            padding=dilation * (kernel // 2),
            groups=groups,
            dilation=dilation,
            bias=not norm,
        )
        self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = {
            "relu": nn.ReLU(),
            "relu6": nn.ReLU6(),
            "gelu": nn.GELU(),
            "silu": nn.SiLU(),
            "hardswish": nn.Hardswish(),
            "sigmoid": nn.Sigmoid(),
            "none": nn.Identity(),
        }[act]
        self.residual = residual and stride == 1 and cin == cout

    def forward(self, x):
        y = self.act(self.norm(self.conv(x)))
        return y + x if self.residual else y


@st.composite
def conv_blocks(draw):
    cin = draw(st.sampled_from([1, 3, 5, 8, 12, 16, 24, 33]))
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if kind == "depthwise":
        groups, cout = cin, cin
    elif kind == "grouped" and cin % 2 == 0:
        groups, cout = 2, draw(st.sampled_from([2, 6, 10, 16]))
    else:
        groups, cout = 1, draw(st.sampled_from([1, 4, 7, 8, 16, 20, 32, 40]))
    block = ConvBlock(
        cin,
        cout,
        kernel=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.sampled_from([1, 1, 2])),
        groups=groups,
        dilation=draw(st.sampled_from([1, 1, 2])),
        act=draw(
            st.sampled_from(["relu", "relu6", "gelu", "silu", "hardswish", "sigmoid", "none"])
        ),
        residual=draw(st.booleans()),
        norm=draw(st.booleans()),
    )
    size = draw(st.sampled_from([5, 7, 8, 13, 16, 28]))
    return block, (1, cin, size, draw(st.sampled_from([size, 9])))


def close_to_pytorch(model: nn.Module, shape, tolerance: float = 1e-4) -> None:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(shape)
    model = model.eval()
    with torch.no_grad():
        want = model(x).numpy()
    got = run_compiled(model, x)
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=tolerance)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_blocks())
def test_convolutions_equal_pytorch(case):
    block, shape = case
    close_to_pytorch(block, shape)


class Dense(nn.Module):
    def __init__(self, features, outputs, batched):
        super().__init__()
        self.linear = nn.Linear(features, outputs)
        self.batched = batched

    def forward(self, x):
        y = torch.relu(self.linear(x))
        return y @ y.transpose(-1, -2) if self.batched else y


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([1, 3, 7, 16]),
    st.sampled_from([5, 16, 33, 64]),
    st.sampled_from([1, 10, 24, 100]),
    st.booleans(),
)
def test_dense_and_batched_matmul_equal_pytorch(rows, features, outputs, batched):
    close_to_pytorch(Dense(features, outputs, batched), (2, rows, features))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["max", "avg", "global"]),
    st.sampled_from([3, 8, 16]),
    st.sampled_from([7, 12, 15]),
)
def test_pools_equal_pytorch(kind, channels, size):
    pool = {
        "max": nn.MaxPool2d(3, 2, padding=1),
        "avg": nn.AvgPool2d(2, 2),
        "global": nn.AdaptiveAvgPool2d(1),
    }[kind]
    close_to_pytorch(nn.Sequential(nn.Conv2d(3, channels, 1), pool), (1, 3, size, size))


def test_a_transformer_layer_equals_pytorch_and_its_softmax_and_norms_run_row_schedules():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
    )
    close_to_pytorch(layer, (1, 9, 32))
    found = kernels(lowered(layer.eval(), torch.randn(1, 9, 32)))
    matmuls = [f for name, f in found.items() if "matmul" in name]
    assert matmuls and all(SCHEDULE_ATTR in (f.attrs or {}) for f in matmuls)
    # softmax and layer norm (several reductions in one kernel): one parallel loop over rows
    rows = [f for name, f in found.items() if "softmax" in name or "layer_norm" in name]
    assert len(rows) == 2  # the attention's softmax; both layer norms call one kernel
    assert all(str(f.attrs[SCHEDULE_ATTR]) == "RowReductionRule" for f in rows)


@settings(max_examples=8, deadline=None)
@given(
    shape=st.lists(st.integers(1, 37), min_size=2, max_size=4),
    axis=st.integers(-4, 3),
    norm=st.booleans(),
)
def test_row_reductions_equal_pytorch_on_any_shape_and_axis(shape, axis, norm):
    axis %= len(shape)
    torch.manual_seed(1)
    if norm:  # LayerNorm over the trailing axes from ``axis`` on
        model = nn.LayerNorm(shape[axis:])
        with torch.no_grad():
            model.weight.normal_()
            model.bias.normal_()
    else:
        model = nn.Softmax(dim=axis)
    # float32 sums lose ~√n ulps over n elements: LayerNorm over a whole 18×18×23×28 tensor
    # (TVM's serial loop; no row to parallelise) missed 1e-4 by 2×
    reduced = math.prod(shape[axis:]) if norm else shape[axis]
    close_to_pytorch(model, tuple(shape), 1e-4 * max(1.0, (reduced / 16384) ** 0.5))


def test_row_reductions_are_vector_partials_inside_one_parallel_loop_over_rows():
    found = kernels(lowered(nn.LayerNorm(384).eval(), torch.randn(1, 128, 384)))
    (norm,) = (f for name, f in found.items() if "layer_norm" in name)
    script = norm.script()
    assert str(norm.attrs[SCHEDULE_ATTR]) == "RowReductionRule"
    assert script.count("T.parallel(") == 1
    # the mean and the variance each sum 16-lane partials (AVX-512) or 8 (AVX2) in a vector loop
    partials = re.findall(r'T\.sblock\("(\w+_rf)"\)', script)
    assert len(partials) == 2, partials
    assert script.count("T.vectorized(") >= 3  # the two partial sums and the normalisation


def test_a_convolution_without_padding_reads_its_input_without_copying_it_first():
    def blocks(conv):
        found = kernels(lowered(conv, torch.randn(1, 32, 20, 20)))
        (kernel,) = (f for name, f in found.items() if "conv2d" in name)
        return re.findall(r'T\.sblock\("(\w+)"\)', kernel.script())

    # TVM's NHWC convolution copies its input into "pad_temp" even when there is no padding
    assert "pad_temp" not in blocks(nn.Conv2d(32, 16, 1))
    assert "pad_temp" in blocks(nn.Conv2d(32, 16, 3, padding=1))  # a real padding stays
