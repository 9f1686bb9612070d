"""graphopt's TIR lowering: a tile's small buffers stay on the stack (no workspace call per
tile), large and symbolic ones keep TVM's workspace allocation; numbers are checked by every
compiled test (test_schedules' hypothesis tests build through the same pipeline)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.tvm


def _alloc(shape, scope="local"):
    from tvm import tirx

    return tirx.AllocBuffer(tirx.decl_buffer(shape, "float32", scope=scope))


def _parallel(body):
    from tvm import tirx

    i = tirx.Var("i", "int32")
    return tirx.For(i, 0, 64, tirx.ForKind.PARALLEL, body)


def _marked(stmt) -> list[bool]:
    """Per allocation in a parallel loop's sequence: marked to stay on the stack."""
    return ["disable_lower_builtin" in a.annotations for a in stmt.body.seq if hasattr(a, "buffer")]


def test_small_constant_buffers_are_marked_for_the_stack_large_and_symbolic_ones_are_not():
    from tvm import tirx

    from graphopt.compiler.tir.lowering import STACK_LIMIT, mark_small_allocations

    n = tirx.Var("n", "int32")
    store = tirx.Evaluate(0)
    body = _parallel(
        tirx.SeqStmt(
            [
                _alloc((14, 16)),  # an accumulator tile: 896 bytes
                _alloc((3, 16, 16), scope="global"),  # a padded window: 3 KiB
                _alloc((STACK_LIMIT // 4 + 1,)),  # one float over the limit
                _alloc((n, 16)),  # symbolic
                store,
            ]
        )
    )
    assert _marked(mark_small_allocations(body, STACK_LIMIT)) == [True, True, False, False]
    untouched = _parallel(tirx.SeqStmt([_alloc((STACK_LIMIT,)), store]))
    assert mark_small_allocations(untouched, STACK_LIMIT).same_as(
        untouched
    )  # nothing to mark: same object


def _kernel_ir(pipeline: str) -> str:
    import tvm

    from graphopt.compiler.build import export_program, lower_program
    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.lowering import pipeline_for

    target = resolve_target("llvm")
    model = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.ReLU6()).eval()
    mod, _ = lower_program(export_program(model, (torch.randn(1, 32, 28, 28),)), target, None)
    name, func = next(
        (gv.name_hint, f) for gv, f in mod.functions_items() if "conv2d" in gv.name_hint
    )
    kernel = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    pipeline = pipeline_for(target.tvm()) if pipeline == "graphopt" else pipeline
    return tvm.tirx.build(kernel, target=target.tvm(), pipeline=pipeline).inspect_source("ll")


def test_a_depthwise_tile_allocates_nothing_per_tile():
    """TVM's own pipeline allocates the tile's padded window and accumulator from the workspace
    pool inside the parallel loop; ours keeps them on the stack, where LLVM promotes them."""
    workspace = "@__TVMBackendAllocWorkspace, align"
    assert workspace in _kernel_ir("default")
    assert workspace not in _kernel_ir("graphopt")
