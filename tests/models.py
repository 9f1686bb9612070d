"""A tiny model zoo for tests: each model exercises one structure the passes must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (in place)."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int = 3, cout: int = 8, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class MLPWithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.bn(self.fc1(x)))))


class SharedConvOutput(nn.Module):
    """The conv's output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class DataDependentBranch(nn.Module):
    """Control flow on tensor values: symbolic tracing cannot follow it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


class NeedsLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.gate = DataDependentBranch()

    def forward(self, x):
        return self.gate(self.conv(x))


class WithIdentities(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.skip = nn.Identity()
        self.drop = nn.Dropout2d(0.2)

    def forward(self, x):
        y = self.drop(self.skip(self.conv(x)))
        y = y.view(y.shape).contiguous()
        unused = torch.sigmoid(y)  # noqa: F841 - dead code on purpose
        return F.dropout(y, p=0.3, training=False)


def conv_bn_model() -> nn.Module:
    """Factory used by recipe tests (``tests.models:conv_bn_model``)."""
    torch.manual_seed(0)
    return randomize_batch_norm(nn.Sequential(ConvBnRelu(3, 8), ResidualBlock(8))).eval()


def small_classifier(width: int = 8) -> nn.Module:
    """(conv 3×3 → BN → ReLU) × 2 → pool → linear to 4 classes, seeded: the toy model of the
    training-time pruning tests (two prunable groups of ``width`` channels)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()


def labelled_batches(n: int = 32, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random (6×6 image, label of 4) batches for ``small_classifier``."""
    torch.manual_seed(1)
    x, y = torch.randn(n, 3, 6, 6), torch.randint(0, 4, (n,))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
