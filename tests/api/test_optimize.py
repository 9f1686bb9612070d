"""optimize(): never mutates its input, reports costs, refuses unknown targets."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import graphopt
from graphopt.passes import EliminateDeadCode, FoldBatchNorm, RemoveIdentity
from graphopt.report import OptimizeReport
from tests.models import randomize_batch_norm


def test_optimize_does_not_mutate_the_model(torchvision_models):
    model = randomize_batch_norm(torchvision_models.resnet18()).eval()
    state = copy.deepcopy(model.state_dict())
    structure = str(model)
    modules = {name: type(m) for name, m in model.named_modules()}

    result = graphopt.optimize(
        model, torch.randn(1, 3, 64, 64), [FoldBatchNorm(), RemoveIdentity(), EliminateDeadCode()]
    )

    assert result.report.passes[0].modified
    assert str(model) == structure
    assert {name: type(m) for name, m in model.named_modules()} == modules
    assert state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.training is False


def test_report_totals_and_json_round_trip(torchvision_models):
    model = torchvision_models.mobilenet_v2().eval()
    result = graphopt.optimize(model, torch.randn(1, 3, 64, 64), [FoldBatchNorm()])
    report = result.report
    assert report.model == "MobileNetV2"
    assert report.input_shapes == [[1, 3, 64, 64]]
    assert report.passes[0].before == report.before
    assert report.passes[-1].after == report.after
    assert report.after.params < report.before.params
    again = OptimizeReport.model_validate(json.loads(report.model_dump_json()))
    assert again == report


def test_unknown_target_is_refused_with_the_valid_names():
    with pytest.raises(graphopt.CompileError, match="valid targets: llvm, cuda"):
        graphopt.optimize(torch.nn.Linear(2, 2), torch.randn(1, 2), [], target="x86")


def test_graph_module_input_is_taken_as_captured():
    gm = graphopt.capture(
        torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Identity()), torch.randn(1, 3)
    )
    result = graphopt.optimize(gm, torch.randn(1, 3), [RemoveIdentity()])
    assert result.report.passes[0].touched == ["1"]
    assert hasattr(gm, "1")  # the given graph module keeps its identity node
