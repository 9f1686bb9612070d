"""RemoveIdentity and EliminateDeadCode: structure, exactness, declines, side effects kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.passes import EliminateDeadCode, RemoveIdentity
from tests.models import MLPWithBatchNorm, WithIdentities

X = torch.randn(1, 3, 6, 6)


def ops(gm) -> list[str]:
    return [
        n.op + ":" + (n.target if isinstance(n.target, str) else n.target.__name__)
        for n in gm.graph.nodes
    ]


def test_identities_are_bypassed_and_their_modules_deleted():
    model = WithIdentities().eval()
    result = graphopt.optimize(model, X, [RemoveIdentity()])
    report = result.report.passes[0]
    assert report.touched == ["skip", "drop", "view", "contiguous", "dropout"]
    assert not hasattr(result.model, "skip") and not hasattr(result.model, "drop")
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), model(X), rtol=0, atol=0)


def test_dead_code_is_removed_after_identities():
    result = graphopt.optimize(WithIdentities().eval(), X, [RemoveIdentity(), EliminateDeadCode()])
    assert ops(result.model) == ["placeholder:x", "call_module:conv", "output:output"]
    assert result.report.passes[1].touched == ["getattr_1", "sigmoid"]  # y.shape fed the view


def test_training_dropout_is_declined_with_reason():
    model = MLPWithBatchNorm().train()
    report = graphopt.optimize(model, torch.randn(4, 16), [RemoveIdentity()]).report.passes[0]
    assert report.touched == []
    assert report.declined[0].target == "drop"
    assert "training mode" in report.declined[0].reason


def test_a_real_reshape_is_kept():
    class Flatten(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1) + 1

    result = graphopt.optimize(Flatten(), X, [RemoveIdentity()])
    assert not result.report.passes[0].modified
    assert "reshape" in result.model.code


def test_dead_inplace_ops_are_kept():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = x * 1.0
            self.relu(y)  # result unused, but y is changed in place
            y.add_(1.0)
            F.relu(y, inplace=True)
            return y

    model = InPlace()
    x = torch.randn(1, 4)
    result = graphopt.optimize(model, x, [EliminateDeadCode()])
    assert not result.report.passes[0].modified
    torch.testing.assert_close(result.model(x), model(x))


def test_dead_code_respects_selectors():
    class TwoDead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            self.a(x)
            self.b(x)
            return x + 1

    result = graphopt.optimize(TwoDead(), torch.randn(1, 4), [EliminateDeadCode(exclude=["b"])])
    assert result.report.passes[0].touched == ["a"]
    assert hasattr(result.model, "b") and not hasattr(result.model, "a")
