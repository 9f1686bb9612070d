"""Models whose ``forward`` branches on shapes, written the way common CIFAR model zoos (such
as Torch-Pruning's benchmark models) write them: symbolic FX tracing cannot follow these."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ShortcutBlock(nn.Module):
    """A basic block whose shortcut is chosen by comparing shapes at run time."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if x.size(1) != out.size(1) or x.shape[-1] != out.shape[-1]:
            extra = out.size(1) - x.size(1)
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return F.relu(out + x)


class ShapeBranchingResNet(nn.Module):
    """A small CIFAR ResNet (option-A shortcuts) with shape checks and a size-based flatten."""

    def __init__(self, widths=(8, 16, 32), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(ShortcutBlock(cin, width, 1 if i == 0 else 2))
            cin = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(widths[-1], classes)

    def forward(self, x, return_features: bool = False):
        assert x.dim() == 4, "expects NCHW"
        out = self.layers(F.relu(self.bn(self.stem(x))))
        out = F.avg_pool2d(out, out.size()[3])
        features = out.view(out.size(0), -1)
        if return_features:
            return self.linear(features), features
        return self.linear(features)


class ShapeBranchingVGG(nn.Module):
    """VGG-style features, then a flatten chosen by the input's rank."""

    def __init__(self) -> None:
        super().__init__()
        layers, cin = [], 3
        for width in (8, "M", 16, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        out = self.features(x)
        if len(out.shape) == 4 and out.size(2) > 1:
            out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.classifier(out)
