"""FoldBatchNorm: structure, numbers (exact), declines with reasons, real torchvision models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.passes import FoldBatchNorm
from tests.models import MLPWithBatchNorm, ResidualBlock, SharedConvOutput, randomize_batch_norm


def module_types(gm) -> list[type]:
    return [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_structure_conv_bn_becomes_one_conv_with_bias():
    model = randomize_batch_norm(ResidualBlock(4)).eval()
    result = graphopt.optimize(model, torch.randn(1, 4, 6, 6), [FoldBatchNorm()])
    assert module_types(result.model) == [nn.Conv2d, nn.Conv2d]
    assert not hasattr(result.model, "bn1") and not hasattr(result.model, "bn2")
    assert result.model.conv1.bias is not None
    assert result.report.passes[0].touched == ["conv1", "conv2"]
    assert "conv1 = self.conv1(x)" in result.model.code


@pytest.mark.parametrize(
    "model, x",
    [
        (nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5)), torch.randn(2, 3, 9)),
        (
            nn.Sequential(nn.Conv2d(3, 6, 3, groups=3, bias=True), nn.BatchNorm2d(6)),
            torch.randn(2, 3, 7, 7),
        ),
        (
            nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4, affine=False)),
            torch.randn(1, 2, 5, 5, 5),
        ),
        (nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)), torch.randn(4, 6)),
    ],
    ids=["conv1d", "grouped-conv2d-bias", "conv3d-no-affine", "linear"],
)
def test_numbers_are_preserved_for_each_producer_kind(model, x):
    model = randomize_batch_norm(model).eval()
    result = graphopt.optimize(model, x, [FoldBatchNorm()])
    assert len(result.report.passes[0].touched) == 1
    assert not any(
        issubclass(t, nn.modules.batchnorm._BatchNorm) for t in module_types(result.model)
    )
    with torch.no_grad():
        assert max_rel_error(result.model(x), model(x)) < 1e-6


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_fold_exactly(torchvision_models, name):
    model = randomize_batch_norm(getattr(torchvision_models, name)()).eval()
    x = torch.randn(2, 3, 224, 224)
    result = graphopt.optimize(model, x, [FoldBatchNorm()])
    assert not any(issubclass(t, nn.BatchNorm2d) for t in module_types(result.model))
    with torch.no_grad():
        assert max_rel_error(result.model(x), model(x)) < 1e-5
    expected = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(result.report.passes[0].touched) == expected
    assert result.report.after.params < result.report.before.params


def test_declines_training_mode_with_reason():
    model = randomize_batch_norm(ResidualBlock(4)).train()
    report = graphopt.optimize(model, torch.randn(2, 4, 6, 6), [FoldBatchNorm()]).report.passes[0]
    assert not report.modified
    assert [d.target for d in report.declined] == ["conv1", "conv2"]
    assert "training mode" in report.declined[0].reason
    assert report.declined[0].location and "tests/models.py" in report.declined[0].location


def test_declines_when_the_conv_output_has_other_users():
    model = randomize_batch_norm(SharedConvOutput()).eval()
    report = graphopt.optimize(model, torch.randn(1, 4, 5, 5), [FoldBatchNorm()]).report.passes[0]
    assert report.touched == []
    assert report.declined[0].target == "conv"
    assert "also used by ['add']" in report.declined[0].reason


def test_declines_a_module_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)

    report = graphopt.optimize(
        Twice().eval(), torch.randn(1, 3, 4, 4), [FoldBatchNorm()]
    ).report.passes[0]
    assert report.declined and "called at 2 places" in report.declined[0].reason


def test_declines_batchnorm1d_on_a_3d_linear_output():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(3)).eval()  # BN over dim 1 (length 3)
    report = graphopt.optimize(model, torch.randn(2, 3, 4), [FoldBatchNorm()]).report.passes[0]
    assert "normalises dim 1" in report.declined[0].reason


def test_declines_batchnorm_without_running_stats():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    report = graphopt.optimize(model, torch.randn(2, 3, 4, 4), [FoldBatchNorm()]).report.passes[0]
    assert "no running statistics" in report.declined[0].reason


def test_mlp_linear_batchnorm1d():
    model = randomize_batch_norm(MLPWithBatchNorm()).eval()
    x = torch.randn(8, 16)
    result = graphopt.optimize(model, x, [FoldBatchNorm()])
    assert result.report.passes[0].touched == ["fc1"]
    with torch.no_grad():
        assert max_rel_error(result.model(x), model(x)) < 1e-6
