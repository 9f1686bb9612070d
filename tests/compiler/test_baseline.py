"""The never-slower check: compile(..., baseline=) times the artifact against ONNX Runtime or
eager, stores both figures in the manifest, and warns when the artifact is not faster."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

import graphopt
from graphopt.compiler.artifact import load
from graphopt.compiler.measure import baseline as baseline_module
from graphopt.compiler.measure.baseline import SlowerThanBaselineWarning
from graphopt.errors import CompileError, ConfigError
from tests.compiler.conftest import TinyNet

pytestmark = pytest.mark.tvm
X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("which", ["onnxruntime", "eager"])
def test_both_figures_are_measured_side_by_side_and_kept(which, tmp_path):
    artifact = graphopt.compile(TinyNet().eval(), X, tuning=None, baseline=which)
    check = artifact.manifest.baseline
    assert check.baseline == which and check.threads >= 1 and check.rounds >= 10
    assert check.artifact_ms > 0 and check.baseline_ms > 0
    assert check.ratio == pytest.approx(check.artifact_ms / check.baseline_ms)
    assert load(artifact.save(tmp_path / "a")).manifest.baseline == check


def test_a_faster_baseline_warns_and_a_slower_one_does_not(monkeypatch):
    real = baseline_module.runner

    def taking(call):
        def runner(*args):
            real(*args)  # the baseline loads as usual; then each call is `call`
            return call

        return runner

    # a call that does nothing (not time.sleep(0): that yields the core to the artifact's
    # spinning worker threads and measured slower than the artifact on a 2-core CI machine)
    monkeypatch.setattr(baseline_module, "runner", taking(lambda: None))
    with pytest.warns(SlowerThanBaselineWarning, match="not faster than onnxruntime"):
        slow = graphopt.compile(TinyNet().eval(), X, tuning=None, baseline="onnxruntime")
    assert not slow.manifest.baseline.faster and "NOT faster" in slow.manifest.baseline.line()

    # 100 ms a call: 1000× the tiny artifact's time (with 20 ms it measured 24 ms on a machine
    # whose two cores ran another job, and the check rightly warned)
    monkeypatch.setattr(baseline_module, "runner", taking(lambda: time.sleep(0.1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowerThanBaselineWarning)
        fast = graphopt.compile(TinyNet().eval(), X, tuning=None, baseline="onnxruntime")
    assert fast.manifest.baseline.faster and fast.manifest.baseline.baseline_ms >= 100


def test_baselines_are_checked_before_any_work():
    with pytest.raises(CompileError, match="baseline must be one of onnxruntime, eager"):
        graphopt.compile(TinyNet().eval(), X, tuning=None, baseline="tensorrt")
    with pytest.raises(CompileError, match="times CPU artifacts this host runs, not aarch64"):
        graphopt.compile(TinyNet().eval(), X, target="aarch64", tuning=None, baseline="eager")
    with pytest.raises(ConfigError, match="needs a target"):
        graphopt.optimize(TinyNet().eval(), X, baseline="eager")


def test_optimize_passes_the_baseline_to_compile():
    result = graphopt.optimize(TinyNet().eval(), X, target="llvm", tuning=None, baseline="eager")
    assert result.artifact.manifest.baseline.baseline == "eager"
