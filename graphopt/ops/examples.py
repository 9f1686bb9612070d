"""Tiny models that put one op between prunable layers: the instances on which the
handler agreement test checks that coupling, surgery and cost agree."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Between(nn.Module):
    """``tail(body(head(x)))``: the head and the lazily sized tail are prunable layers."""

    def __init__(self, head: nn.Module, body: nn.Module | Callable, tail: nn.Module) -> None:
        super().__init__()
        self.head, self.tail = head, tail
        self.body = body if isinstance(body, nn.Module) else Lambda(body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x)))


class Lambda(nn.Module):
    """A function as a module; FX traces through it, so the graph holds the function's ops."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class WithWeight(nn.Module):
    """``fn(x, weight)`` with the weight a parameter of this module (read through get_attr)."""

    def __init__(self, fn: Callable, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fn, self.weight = fn, nn.Parameter(torch.randn(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight)


def image(body: nn.Module | Callable, channels: int = 8, size: int = 6):
    """x (2, 3, size, size) → Conv(3→channels, 1×1) → body → Conv(→4, 1×1)."""
    return _built(
        Between(nn.Conv2d(3, channels, 1), body, nn.LazyConv2d(4, 1)),
        torch.randn(2, 3, size, size),
    )


def tokens(body: nn.Module | Callable, features: int = 8, length: int = 5):
    """x (2, length, 3) → Linear(3→features) → body → Linear(→4)."""
    return _built(
        Between(nn.Linear(3, features), body, nn.LazyLinear(4)), torch.randn(2, length, 3)
    )


def flat(body: nn.Module | Callable, channels: int = 8, size: int = 4):
    """Like :func:`image`, with a lazily sized Linear after the body (the body flattens)."""
    return _built(
        Between(nn.Conv2d(3, channels, 1), body, nn.LazyLinear(4)), torch.randn(2, 3, size, size)
    )


def _built(model: nn.Module, x: torch.Tensor):
    torch.manual_seed(0)
    for p in model.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter):
            nn.init.normal_(p)
    with torch.no_grad():
        model(x)  # sizes the lazy layers
    for m in model.modules():  # non-trivial norm statistics
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), (x,)
