"""Small offline data helpers: CIFAR-10 from the ``*_uint8.npz`` files, and top-1 accuracy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


def load_cifar10(path: str | Path, limit: int | None = None, seed: int | None = None):
    """Images as a normalised float tensor (N, 3, 32, 32) and labels (N,).

    ``limit`` takes a class-balanced random subset (seeded) instead of the whole file.
    """
    data = np.load(path)
    x, y = data["x"], data["y"]
    if limit is not None and limit < len(y):
        order = np.random.default_rng(seed or 0).permutation(len(y))[:limit]
        x, y = x[order], y[order]
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(y).long()


def batches(
    x: torch.Tensor, y: torch.Tensor, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches in order."""
    for start in range(0, len(y), size):
        yield x[start : start + size], y[start : start + size]


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    return 100.0 * correct / len(y)
