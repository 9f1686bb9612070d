"""Weight prefetch of weight-streaming kernels: which kernels get it (structure), that their
tiles together fetch the whole next block (property), that the compiled kernel prefetches and
still equals PyTorch (numbers, on random shapes with odd channel counts and strides)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler import vector_lanes_for
from graphopt.compiler.relax import winograd
from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered

pytestmark = pytest.mark.tvm


@settings(max_examples=200, deadline=None)
@given(
    elements=st.integers(1, 1 << 20),
    per_line=st.sampled_from([4, 8, 16, 32]),
    tiles=st.integers(1, 64),
    iterations=st.integers(1, 5000),
)
def test_the_tiles_of_a_block_fetch_every_line_of_the_next(elements, per_line, tiles, iterations):
    from graphopt.compiler.tir.schedules.prefetch import plan

    share, burst = plan(elements, per_line, tiles, iterations)
    lines = -(-elements // per_line)
    assert share * tiles >= lines and burst * iterations >= share  # every line is fetched
    assert burst == 1 or (burst - 1) * iterations < share  # no burst larger than needed


def _marked_loops(func) -> list[str]:
    from tvm import tirx

    from graphopt.compiler.tir.schedules.prefetch import PREFETCH_ATTR

    found = []

    def walk(stmt):
        if isinstance(stmt, tirx.For) and PREFETCH_ATTR in (stmt.annotations or {}):
            found.append(str(stmt.annotations[PREFETCH_ATTR]))
        children = list(getattr(stmt, "seq", None) or [])
        children += [getattr(stmt, a, None) for a in ("body", "block", "then_case", "else_case")]
        for child in children:
            if isinstance(child, tirx.Stmt):
                walk(child)

    walk(func.body)
    return found


def _conv_kernel(model, x):
    return next(f for name, f in kernels(lowered(model, x)).items() if "conv2d" in name)


def test_a_weight_streaming_convolution_marks_its_reduction_small_ones_do_not():
    from graphopt.compiler.tir.schedules import TILE_ATTR

    big = _conv_kernel(
        nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()), torch.randn(1, 256, 7, 7)
    )
    # blocks of groups × lanes output channels (9·256 weights each): 2 × 16 on AVX-512 (73728
    # weights), 1 × 8 on AVX2 (18432); 7 row tiles per block
    (marked,) = _marked_loops(big)
    name, rows, weights = marked.split(":")
    assert (name, rows) == ("param_0_global", "7")
    assert int(weights) % (9 * 256 * vector_lanes_for("llvm")) == 0
    assert "prefetch next block" in big.attrs[TILE_ATTR]
    small = _conv_kernel(nn.Conv2d(16, 32, 3, padding=1), torch.randn(1, 16, 14, 14))
    assert _marked_loops(small) == [] and "prefetch" not in small.attrs[TILE_ATTR]
    # a dense layer's weights arrive as [in, out]; packed into [out/lanes, in, lanes] panels,
    # a large one streams them block by block like a convolution, a small one does not
    (dense,) = _marked_loops(_dense_kernel(nn.Linear(600, 520), torch.randn(48, 600)))
    name, _, weights = dense.split(":")
    assert name == "param_0_global" and int(weights) % (600 * vector_lanes_for("llvm")) == 0
    assert not _streams(nn.Linear(60, 52), torch.randn(48, 60))


def test_blocks_read_once_or_larger_than_the_cache_are_not_prefetched():
    """One row (a dense layer at batch 1) reads each weight once: a sequential stream the
    hardware follows; a block the cache cannot keep would be read twice."""
    from graphopt.compiler.tir.schedules import rules

    assert not _streams(nn.Linear(600, 520), torch.randn(1, 600))
    streaming = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 256, 7, 7)
    assert _streams(streaming, x)
    with mock.patch.object(rules, "CACHE_BYTES", 9 * 256 * 4):  # under one block
        assert not _streams(streaming, x)


def _dense_kernel(model, x):
    return next(f for name, f in kernels(lowered(model.eval(), x)).items() if "matmul" in name)


def test_a_function_without_marked_loops_is_returned_unchanged():
    import tvm
    from tvm import tirx

    from graphopt.compiler.tir.schedules.prefetch import insert_prefetches

    i = tirx.Var("i", "int32")
    func = tirx.PrimFunc([], tirx.For(i, 0, 8, tirx.ForKind.PARALLEL, tirx.Evaluate(0)))
    mod = tvm.IRModule({"main": func})
    assert insert_prefetches()(mod)["main"].same_as(func)


def _llvm_ir(model, x) -> str:
    import tvm

    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.lowering import pipeline_for

    target = resolve_target("llvm").tvm()
    kernel = tvm.IRModule({"main": _conv_kernel(model, x).with_attr("global_symbol", "main")})
    return tvm.tirx.build(kernel, target=target, pipeline=pipeline_for(target)).inspect_source("ll")


def test_the_compiled_kernel_prefetches_into_l2():
    streaming = nn.Conv2d(128, 256, 3, padding=1)
    ir = _llvm_ir(streaming, torch.randn(1, 128, 6, 6))
    # llvm.prefetch(address, read, locality 2 = L2, data cache)
    assert "@llvm.prefetch" in ir and ", i32 0, i32 2, i32 1)" in ir
    assert "@llvm.prefetch" not in _llvm_ir(nn.Conv2d(16, 32, 3), torch.randn(1, 16, 8, 8))


def _streams(model, x) -> bool:
    return any(_marked_loops(f) for f in kernels(lowered(model.eval(), x)).values())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cin=st.sampled_from([136, 160, 203]),
    cout=st.sampled_from([216, 256, 264]),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    size=st.sampled_from([4, 7, 9]),
)
def test_weight_streaming_convolutions_equal_pytorch(cin, cout, kernel, stride, size):
    if kernel == 1:  # as many weights as the 3×3 cases: more channels
        cin, cout = cin * 5, cout * 2
    model = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2), nn.ReLU())
    with mock.patch.object(winograd, "choose_tile", lambda *_: None):  # the direct kernel
        assert _streams(model, torch.randn(1, cin, size, size))
        close_to_pytorch(model, (1, cin, size, size))
