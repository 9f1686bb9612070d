"""MACs and params counted on the FX graph, against hand-computed and published values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.analysis.cost import model_stats, node_costs


def macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    return model_stats(graphopt.capture(model, inputs)).macs


def test_conv_linear_norm_by_hand():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert macs(conv, torch.randn(1, 4, 5, 5)) == (8 * 5 * 5) * (4 // 2) * 9
    assert macs(nn.Linear(7, 3), torch.randn(2, 5, 7)) == 2 * 5 * 3 * 7
    assert macs(nn.BatchNorm2d(4), torch.randn(2, 4, 3, 3)) == 2 * 4 * 3 * 3
    assert macs(nn.ConvTranspose2d(4, 6, 2, stride=2), torch.randn(1, 4, 3, 3)) == (4 * 9) * 6 * 4


def test_matmul_and_attention_by_hand():
    class MatMul(nn.Module):
        def forward(self, a, b):
            return a @ b + torch.bmm(a, b)

    assert macs(MatMul(), torch.randn(2, 3, 4), torch.randn(2, 4, 5)) == 2 * (2 * 3 * 5 * 4)

    class SDPA(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    assert macs(SDPA(), q, k, v) == 2 * 4 * 6 * 10 * (8 + 8)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    L, E = 5, 16
    expected = 2 * (4 * L * E * E + 2 * L * L * E)
    assert macs(SelfAttention(), torch.randn(2, L, E)) == expected


def test_params_count_each_parameter_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    stats = model_stats(graphopt.capture(model, torch.randn(1, 4)))
    assert stats.params == 20


@pytest.mark.parametrize(
    "name, gmacs, mparams",
    [("resnet18", 1.814, 11.690), ("resnet50", 4.089, 25.557), ("mobilenet_v2", 0.3006, 3.505)],
)
def test_torchvision_models_match_published_counts(torchvision_models, name, gmacs, mparams):
    # Published conv+linear MACs (torchvision docs: GFLOPS column, which counts MACs).
    gm = graphopt.capture(getattr(torchvision_models, name)().eval(), torch.randn(1, 3, 224, 224))
    conv_linear = sum(
        c.macs
        for c in node_costs(gm)
        if c.op == "call_module" and isinstance(gm.get_submodule(c.target), (nn.Conv2d, nn.Linear))
    )
    assert conv_linear / 1e9 == pytest.approx(gmacs, rel=2e-3)
    assert model_stats(gm).params / 1e6 == pytest.approx(mparams, rel=1e-3)
