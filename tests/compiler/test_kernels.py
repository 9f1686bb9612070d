"""Kernel report: every fused kernel timed, FLOPs from TIR, shares summing to one, tuned kernels
picked from the cache; targets this host cannot run are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.compiler import Tuning, vector_lanes_for
from graphopt.compiler.measure.kernels import kernel_report, measure_gemm_peak
from graphopt.errors import CompileError

pytestmark = pytest.mark.tvm


def conv_relu() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))
    return model.eval(), torch.randn(1, 3, 8, 8)


def test_every_kernel_is_timed_and_the_conv_does_its_flops():
    model, x = conv_relu()
    report = kernel_report(model, x, peak_gflops=100.0, repeats=2)
    assert report.peak_gflops == 100.0 and report.target == "llvm"
    assert abs(sum(k.share for k in report.kernels) - 1) < 1e-6
    assert [k.share for k in report.kernels] == sorted(
        (k.share for k in report.kernels), reverse=True
    )
    conv = next(k for k in report.kernels if "conv2d" in k.name)
    macs = 8 * 3 * 9 * 64
    assert 2 * macs <= conv.gflop * 1e9 <= 2 * macs + 3 * 8 * 64  # + bias and ReLU per output
    assert conv.ms > 0 and conv.gflops == pytest.approx(conv.gflop / conv.ms * 1e3)
    # no cache given: graphopt's default schedules, for every kernel
    assert {k.schedule for k in report.kernels} == {"default"}
    # 8 output channels and 8 columns fill half of an AVX-512 vector: the report says so
    width = vector_lanes_for("llvm")
    assert conv.tile.startswith(f"{min(width, 8)}/{width} lanes")
    assert ("shape-limited" in conv.tile) == (width > 8)
    assert "| kernel | calls |" in report.table()


def test_reshapes_that_become_views_are_not_counted_as_kernels():
    # a linear layer on a token sequence: reshapes to 2-D and back, views once compiled
    report = kernel_report(nn.Linear(16, 24).eval(), torch.randn(1, 5, 16), repeats=1)
    assert [k.name for k in report.kernels if "reshape" in k.name] == []
    assert any("matmul" in k.name for k in report.kernels)


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_kernels_with_a_cache_record_run_their_tuned_schedule(tmp_path):
    model, x = conv_relu()
    tuning = Tuning(cache_dir=tmp_path, per_task=2, per_iter=2, progress=False, default_variants=1)
    summary = graphopt.compile(model, x, tuning=tuning).manifest.tuning
    # every task's default schedule (packed conv weights included) was measured into the cache
    assert summary.defaults_measured == summary.tasks == summary.tasks_applied
    report = kernel_report(model, x, tuning=tuning, peak_gflops=100.0, repeats=2)
    assert sum(k.schedule == "tuned" for k in report.kernels) == summary.tasks_applied > 0


def test_peak_is_positive_and_foreign_targets_are_refused():
    assert measure_gemm_peak(size=256, repeats=2) > 0.1
    model, x = conv_relu()
    with pytest.raises(CompileError, match="does not run here"):
        kernel_report(model, x, target="aarch64")
