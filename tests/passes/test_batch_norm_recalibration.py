"""BatchNormRecalibration: running statistics become the data's, exactly; nothing else changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes import BatchNormRecalibration, ChannelPruning
from tests.conftest import SHARED_DATA


def toy() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():  # statistics that describe some other model
        model[2].running_mean.fill_(7.0)
        model[2].running_var.fill_(0.01)
        model[2].weight.uniform_(0.5, 2.0)
    return model.eval()


def test_statistics_are_the_average_over_the_batches_exactly():
    model = toy()
    batches = [torch.randn(8, 3, 6, 6) * (1 + k) for k in range(3)]
    result = graphopt.optimize(
        model, batches[0], [BatchNormRecalibration()], calibration_data=batches
    )
    bn = result.model.get_submodule("2")
    with torch.no_grad():
        per_batch = [model[0](x).transpose(0, 1).reshape(4, -1) for x in batches]
    mean = torch.stack([a.mean(1) for a in per_batch]).mean(0)
    var = torch.stack([a.var(1, unbiased=True) for a in per_batch]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(bn.running_var, var, atol=1e-5)
    assert torch.equal(bn.weight, model[2].weight) and torch.equal(bn.bias, model[2].bias)
    assert bn.momentum == model[2].momentum and not bn.training  # restored
    assert not result.model.get_submodule("1").training  # dropout stayed in inference mode
    assert model[2].running_mean[0] == 7.0  # the input model is untouched
    report = result.report.passes[0]
    assert report.touched == ["2"] and report.metrics["batches"] == 3


def test_labelled_batches_and_the_batch_limit():
    model = toy()
    loader = [(torch.randn(4, 3, 6, 6), torch.zeros(4)) for _ in range(5)]
    result = graphopt.optimize(
        model, loader[0][0], [BatchNormRecalibration(batches=2)], calibration_data=loader
    )
    assert result.report.passes[0].metrics["batches"] == 2
    assert result.model.get_submodule("2").num_batches_tracked == 2


def test_without_calibration_data_it_refuses():
    with pytest.raises(ConfigError, match="needs calibration_data"):
        graphopt.optimize(toy(), torch.randn(1, 3, 6, 6), [BatchNormRecalibration()])


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10_resnet" / "resnet56-4bfd9763.th").exists()
    or not (SHARED_DATA / "cifar10" / "test_uint8.npz").exists()
    or not (SHARED_DATA / "cifar10" / "train20k_uint8.npz").exists(),
    reason="pretrained CIFAR ResNet-56 or the CIFAR-10 files are missing from ../shared/data",
)
def test_recalibration_wins_back_accuracy_after_pruning():
    from graphopt.testing.data import batches, load_cifar10, top1
    from graphopt.testing.zoo import cifar_resnet

    model = cifar_resnet(56, SHARED_DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    x, y = load_cifar10(SHARED_DATA / "cifar10" / "test_uint8.npz", limit=1000, seed=0)
    xc, yc = load_cifar10(SHARED_DATA / "cifar10" / "train20k_uint8.npz", limit=512, seed=0)
    prune = ChannelPruning(ratio=0.5, exclude=["conv1", "layer*.conv2", "linear"])
    pruned = graphopt.optimize(model, x[:1], [prune])
    recalibrated = graphopt.optimize(
        pruned.model, x[:1], [BatchNormRecalibration()], calibration_data=batches(xc, yc, 64)
    )
    one_shot, after = top1(pruned.model, x, y), top1(recalibrated.model, x, y)
    assert after > one_shot + 5, (one_shot, after)
