"""In-place ops on inputs: every run of the graph (capture, reference, verification) sees the
same inputs, the caller's tensors are never changed, and no pass deletes an in-place op."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import CaptureError
from graphopt.passes import (
    EliminateDeadCode,
    FoldBatchNorm,
    Net2NetDeepen,
    Net2NetShrink,
    Net2NetWiden,
    RemoveIdentity,
)
from tests.models import randomize_batch_norm


class InPlaceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x.mul_(2).add_(1)
        return torch.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize(
    "pass_",
    [
        Net2NetShrink(),
        FoldBatchNorm(),
        RemoveIdentity(),
        EliminateDeadCode(),
        Net2NetWiden(factor=2),
        Net2NetDeepen(),
    ],
    ids=lambda p: p.name,
)
def test_exact_passes_keep_in_place_ops_and_leave_the_inputs_alone(pass_):
    model = randomize_batch_norm(InPlaceFirst()).eval()
    x = torch.randn(1, 3, 8, 8)
    original = x.clone()
    result = graphopt.optimize(model, x, [pass_])
    torch.testing.assert_close(x, original, rtol=0, atol=0)
    assert sum(n.target in ("mul_", "add_") for n in result.model.graph.nodes) == 2
    with torch.no_grad():
        want, got = model(original.clone()), result.model(original.clone())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class CountsCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.conv(x)


def test_a_buffer_changed_by_forward_is_refused_not_frozen():
    model = CountsCalls()
    with pytest.raises(CaptureError, match=r"changes buffer\(s\) \['calls'\]"):
        graphopt.capture(model, torch.randn(1, 3, 4, 4))
    assert model.calls.item() == 0  # the caller's model is never run


def test_calibration_data_is_not_changed_by_in_place_ops():
    from graphopt.passes import BatchNormRecalibration

    model = randomize_batch_norm(InPlaceFirst()).eval()
    batches = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    copies = [b.clone() for b in batches]
    graphopt.optimize(
        model, torch.randn(1, 3, 8, 8), [BatchNormRecalibration()], calibration_data=batches
    )
    for batch, copy in zip(batches, copies, strict=True):
        torch.testing.assert_close(batch, copy, rtol=0, atol=0)


def test_a_nan_buffer_forward_leaves_alone_is_not_a_change():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_mean[0] = float("nan")  # a diverged run's statistics
    gm = graphopt.capture(model, torch.randn(1, 3, 8, 8))
    assert torch.isnan(gm.get_buffer("1.running_mean")[0])
