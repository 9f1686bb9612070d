"""Fixtures for compiler tests: one small model compiled once per session (TVM is slow)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models import randomize_batch_norm


class TinyNet(nn.Module):
    """Conv + BN + ReLU + residual + pool + linear: the ops every CNN needs, compiled in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.conv2(y) + y)
        return self.fc(y.mean(dim=(2, 3)))


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.fc(x)
        return y, torch.sigmoid(y).sum(dim=1)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batch_norm(TinyNet()).eval()


@pytest.fixture(scope="session")
def tiny():
    model = tiny_net()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return model, x


@pytest.fixture(scope="session")
def tiny_artifact(tiny):
    import graphopt

    model, x = tiny
    return graphopt.compile(model, x, tuning=None)
