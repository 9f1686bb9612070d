"""Everything checkable is checked before the first pass runs: the compile target, each pass's
data needs; include/exclude globs that match nothing are warned about, naming the pattern."""

from __future__ import annotations

import time

import pytest
import torch

import graphopt
from graphopt.errors import CompileError, ConfigError, RecipeError
from graphopt.pass_manager import SelectorWarning
from graphopt.passes import (
    BatchNormRecalibration,
    ChannelPruning,
    FoldBatchNorm,
    KnowledgeDistillation,
    LowRankFactorization,
)
from graphopt.recipe import parse_recipe
from tests.models import ConvBnRelu

X = torch.randn(1, 3, 8, 8)


class _Counting:
    def __init__(self) -> None:
        self.started = 0

    def pass_started(self, index, total, pass_) -> None:
        self.started += 1

    def pass_finished(self, index, total, report) -> None:
        pass


@pytest.mark.parametrize("target", ["llvmm", "cuda:90", {"kind": "metal"}, 3])
def test_a_bad_target_fails_before_any_pass_and_fast(target):
    observer, start = _Counting(), time.perf_counter()
    with pytest.raises(CompileError, match="target|CUDA arch"):
        graphopt.optimize(ConvBnRelu().eval(), X, [FoldBatchNorm()], target, observer=observer)
    assert observer.started == 0 and time.perf_counter() - start < 1.0


def test_a_recipe_with_a_bad_target_is_a_recipe_error():
    head = "model: {torchvision: resnet18}\ninputs: [{shape: [1, 3, 8, 8]}]\n"
    with pytest.raises(RecipeError, match=r"compile\.target: .*unknown target 'llvmm'.*\(line 3\)"):
        parse_recipe(head + "compile: {target: llvmm}\n")
    assert parse_recipe(head + "compile: {target: 'cuda:sm_90'}\n").compile.target == "cuda:sm_90"


def test_missing_data_is_reported_for_every_pass_before_the_first_runs():
    observer = _Counting()
    passes = [
        FoldBatchNorm(),
        BatchNormRecalibration(),
        ChannelPruning(ratio=0.5, importance="taylor"),
        LowRankFactorization(rank_ratio=0.5, whiten=True),
        KnowledgeDistillation(steps=1),
    ]
    with pytest.raises(ConfigError) as info:
        graphopt.optimize(ConvBnRelu().eval(), X, passes, observer=observer)
    assert observer.started == 0
    message = str(info.value)
    for index in (1, 2, 3, 4):
        assert f"passes[{index}]" in message
    assert "passes[0]" not in message and "knowledge_distillation) needs training_data" in message


def test_training_data_falls_back_to_calibration_data():
    batches = [torch.randn(1, 3, 8, 8)]
    result = graphopt.optimize(
        ConvBnRelu().eval(), X, [KnowledgeDistillation(steps=1)], calibration_data=batches
    )
    assert result.report.passes[0].name == "knowledge_distillation"


def test_a_pattern_that_matches_nothing_is_warned_about_and_noted():
    with pytest.warns(SelectorWarning, match="'layer9.*' matches no module"):
        result = graphopt.optimize(
            ConvBnRelu().eval(), X, [ChannelPruning(ratio=0.5, include=["conv", "layer9.*"])]
        )
    assert "pattern 'layer9.*' matches no module" in result.report.passes[0].notes
