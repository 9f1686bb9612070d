"""ChannelPruning on the pretrained CIFAR-10 ResNet-56 (real weights, real test images)."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt.passes import ChannelPruning
from graphopt.testing.data import load_cifar10, top1
from graphopt.testing.zoo import cifar_resnet
from tests.conftest import SHARED_DATA

WEIGHTS = SHARED_DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
TEST_SET = SHARED_DATA / "cifar10" / "test_uint8.npz"

pytestmark = pytest.mark.skipif(
    not (WEIGHTS.exists() and TEST_SET.exists()), reason=f"needs {WEIGHTS} and {TEST_SET}"
)

STREAM = ["conv1", "layer*.conv2", "linear"]  # producers of the pad-coupled stage streams


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    return cifar_resnet(56, WEIGHTS), *load_cifar10(TEST_SET, limit=1000, seed=1)


def test_pretrained_weights_load_and_score(data):
    model, x, y = data
    assert top1(model, x, y) > 91.0  # 93.39 % on all 10,000 images


def test_light_pruning_keeps_most_accuracy_and_more_pruning_costs_more(data):
    model, x, y = data
    accuracy = {}
    for ratio in (0.1, 0.5):
        result = graphopt.optimize(model, x[:2], [ChannelPruning(ratio=ratio, exclude=STREAM)])
        assert result.report.passes[0].metrics["achieved_macs_reduction"] == pytest.approx(
            ratio, abs=0.01
        )
        accuracy[ratio] = top1(result.model, x, y)
    base = top1(model, x, y)
    assert accuracy[0.1] > base - 2.0  # measured: no loss at 10 % (block-inner channels, l1)
    assert accuracy[0.5] < accuracy[0.1]


def test_the_coupled_streams_can_be_pruned_too(data):
    model, x, y = data
    result = graphopt.optimize(model, x[:2], [ChannelPruning(ratio=0.3)])
    gm = result.model
    assert gm.conv1.out_channels < 16 or gm.get_submodule("layer3.0.conv2").out_channels < 64
    assert top1(gm, x, y) > 10.0  # still a classifier (one-shot, no fine-tuning)
