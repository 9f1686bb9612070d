"""ChannelPruning on torchvision classification models: 50 % of MACs requested, no per-model
code. Each pruned model runs, keeps its output shape, exports with torch.export, and reaches the
requested MACs within 5 points (or its report names the frozen groups). The heaviest models
are marked slow; ``bench/pruning.py`` runs them all."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt.passes import ChannelPruning

FAST = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "alexnet",
    "squeezenet1_0",
    "densenet121",
    "googlenet",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "regnet_y_400mf",
    "regnet_x_400mf",
    "convnext_tiny",
    "swin_t",
]
SLOW = ["wide_resnet50_2", "vgg11_bn", "inception_v3", "efficientnet_v2_s", "vit_b_16", "maxvit_t"]
INPUT_SIZE = {"vit_b_16": 224, "maxvit_t": 224, "inception_v3": 96, "alexnet": 96, "swin_t": 96}


def build(torchvision_models, name: str):
    kwargs = (
        {"aux_logits": False, "init_weights": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    torch.manual_seed(0)
    model = torchvision_models.get_model(name, weights=None, **kwargs).eval()
    size = INPUT_SIZE.get(name, 64)
    return model, torch.randn(1, 3, size, size)


def check(torchvision_models, name: str) -> None:
    model, x = build(torchvision_models, name)
    result = graphopt.optimize(model, x, [ChannelPruning(ratio=0.5)])
    report = result.report.passes[0]
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    achieved = report.metrics["achieved_macs_reduction"]
    frozen = [d for d in report.declined if d.reason.startswith("frozen")]
    assert abs(achieved - 0.5) <= 0.05 or frozen, (name, achieved, report.notes)
    assert result.report.after.params < result.report.before.params
    torch.export.export(result.model, (x,))
    retraced = torch.fx.symbolic_trace(result.model)  # still traces
    with torch.no_grad():
        torch.testing.assert_close(retraced(x), result.model(x))


@pytest.mark.parametrize("name", FAST)
def test_prunes_torchvision_model(torchvision_models, name):
    check(torchvision_models, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_prunes_heavy_torchvision_model(torchvision_models, name):
    check(torchvision_models, name)
