"""Records of similar workloads replayed on new ones: tile sizes refitted (hypothesis: always
factors of the new extent, inner factors kept when they divide it), a MetaSchedule trace of one
convolution adapted to a sibling with other channel counts computes that sibling's numbers, and
only kernels of the same operator and epilogue count as similar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.tune.transfer import refit

pytestmark = pytest.mark.tvm


def test_refit_keeps_the_inner_tile_and_moves_the_rest_outward():
    assert refit([8, 2, 2, 1], 24) == [6, 2, 2, 1]
    assert refit([1, 4, 2, 16], 48) == [1, 3, 1, 16]
    assert refit([2, 7], 14) == [2, 7]  # same extent: the same decision
    assert refit([1, 16], 7) == [1, 7]


@given(
    st.lists(st.integers(1, 16), min_size=2, max_size=5),
    st.integers(1, 600),
)
def test_refit_always_factors_the_new_extent(factors, extent):
    new = refit(factors, extent)
    assert len(new) == len(factors) and math.prod(new) == extent
    assert all(n <= max(f, 1) for n, f in zip(new[1:], factors[1:], strict=True))
    if extent % factors[-1] == 0:
        assert new[-1] == factors[-1]  # the innermost (vector) factor survives when it fits


def _conv_task(cin: int, cout: int, kernel: int = 3, act=nn.ReLU):
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.build import export_program, lower_program
    from graphopt.compiler.targets import resolve_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), act()).eval()
    x = torch.randn(1, cin, 14, 14)
    target = resolve_target("llvm")
    mod, _ = lower_program(export_program(model, (x,)), target, None, defaults=False)
    tasks = ms.relax_integration.extract_tasks(mod, target.tvm())
    return next(t for t in tasks if "conv2d" in t.task_name), target


def _design_trace(task, target):
    """A MetaSchedule design-space sample of ``task`` (tile sizes decided, nothing measured)."""
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.tir.intrinsics import cpu_intrinsics_only

    with cpu_intrinsics_only():
        context = ms.TuneContext(
            mod=task.dispatched[0],
            target=target.tvm(),
            space_generator="post-order-apply",
            task_name=task.task_name,
        )
        return context.generate_design_space()[0].trace


def _run(mod, target, args):
    from graphopt.compiler.tir.lowering import compile_module

    compile_module(mod, target.tvm()).jit()["main"](*args)
    return args[-1].numpy()


def test_a_trace_adapted_to_other_channel_counts_computes_the_new_kernel():
    import tvm
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.tune.transfer import adapt, signature

    source, target = _conv_task(16, 32)
    sibling, _ = _conv_task(16, 24)  # the source's output channels pruned to 24
    assert signature(source.dispatched[0])[0] == signature(sibling.dispatched[0])[0]
    sch = adapt(_design_trace(source, target), sibling.dispatched[0])
    assert sch is not None
    decisions = [
        [int(d) for d in sch.trace.get_decision(inst)]
        for inst in sch.trace.insts
        if inst.kind.name == "SamplePerfectTile"
    ]
    assert any(math.prod(d) == 24 for d in decisions)  # the channel loop's tile was refitted
    generator = np.random.default_rng(0)
    infos = ms.arg_info.ArgInfo.from_prim_func(sibling.dispatched[0]["main"])

    def arguments():
        return [
            tvm.runtime.tensor(
                generator.standard_normal([int(d) for d in i.shape]).astype(i.dtype)
                if n < len(infos) - 1
                else np.zeros([int(d) for d in i.shape], i.dtype)
            )
            for n, i in enumerate(infos)
        ]

    args = arguments()
    got = _run(sch.mod, target, args)
    args[-1] = tvm.runtime.tensor(np.zeros_like(got))
    want = _run(sibling.dispatched[0], target, args)  # the unscheduled kernel: TVM's reference
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_only_the_same_operator_and_epilogue_are_similar():
    from graphopt.compiler.tune.transfer import signature

    relu, _ = _conv_task(16, 32)
    other_shape, _ = _conv_task(8, 48, kernel=1)
    gelu, _ = _conv_task(16, 32, act=nn.GELU)
    assert signature(relu.dispatched[0])[0] == signature(other_shape.dispatched[0])[0]
    assert signature(relu.dispatched[0])[0] != signature(gelu.dispatched[0])[0]


def test_a_default_measured_slow_once_is_measured_again_beside_the_record_that_beat_it():
    """A default schedule whose only record is inflated (as by a busy machine) and a
    MetaSchedule record that beat it: both are re-measured, and the fresh default record is a
    real time, so the truly faster schedule decides."""
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.tune.candidates import builder, local_runner
    from graphopt.compiler.tune.default_records import TAG, recheck_winners, variant_schedules

    task, target = _conv_task(16, 32)
    tvm_target = target.tvm()
    mod = task.dispatched[0]
    cache = ms.database.MemoryDatabase()
    workload = cache.commit_workload(mod)
    default = variant_schedules(task, {}, tvm_target, 1)[0]
    searched = _design_trace(task, target)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for trace, seconds in ((default.trace, 1.0), (searched, 0.5)):
        cache.commit_tuning_record(
            ms.database.TuningRecord(trace, workload, [seconds], tvm_target, args)
        )
    fresh = recheck_winners([task], cache, tvm_target, builder(tvm_target), local_runner())
    assert len(fresh) == 2 and sum(TAG in str(r.trace) for r in fresh) == 1
    assert all(max(float(s) for s in r.run_secs) < 0.1 for r in fresh)  # real times, not 1 s
    for record in fresh:
        cache.commit_tuning_record(record)
    assert recheck_winners([task], ms.database.MemoryDatabase(), tvm_target, None, None) == []
