"""Data-aware channel pruning: output_error importance and the sensitivity scope.

Known answers on small models: a duplicated channel costs nothing to remove once the consumer
is refit, and a channel the consumer ignores costs nothing to remove at all; the costs match a
least-squares refit computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt.channels import build_channel_graph, find_groups
from graphopt.errors import ConfigError
from graphopt.frontend.fx import capture
from graphopt.passes import ChannelPruning, LayerwiseReconstruction
from graphopt.passes.compress.channel_pruning.output_error import output_error_order

N = 512


def duplicated() -> tuple[nn.Module, torch.Tensor]:
    """Linear 6→4 → ReLU → Linear 4→3 where hidden channel 3 repeats channel 0 and channel 1,
    unique, has the smallest weights (so magnitude would remove it first)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[3] = model[0].weight[0]
        model[0].weight[1] *= 0.3
    return model.eval(), torch.randn(N, 6)


def hidden_group(gm):
    groups = find_groups(build_channel_graph(gm))
    return next(g for g in groups if g.num_channels == 4 and g.params)


def test_removal_costs_equal_a_hand_computed_least_squares_refit():
    model, x = duplicated()
    gm = capture(model, (x[:1],))
    group = hidden_group(gm)
    scores, notes = output_error_order(gm, [group], [(x,)], {group.index: 1})
    assert not notes
    hidden = torch.relu(model[0](x)).detach().double().numpy()
    y = hidden @ model[2].weight.detach().double().numpy().T
    costs = []
    for channel in range(4):
        rest = np.delete(hidden, channel, axis=1)
        refit, *_ = np.linalg.lstsq(rest, y, rcond=None)
        costs.append(float(np.sum((rest @ refit - y) ** 2) / np.sum(y**2)))
    first = int(np.argmin(scores[group.index]))
    assert first in (0, 3) and costs[first] < 1e-6  # the duplicate: free to remove
    assert scores[group.index][first] == pytest.approx(costs[first], abs=1e-5)
    assert min(costs[1], costs[2]) > 1e-3  # the unique channels are not free


def test_output_error_removes_the_duplicate_and_reconstruction_makes_it_exact():
    model, x = duplicated()
    batches = [(x[i : i + 64],) for i in range(0, N, 64)]
    outputs = {}
    for importance in ("l1", "output_error"):
        passes = [
            ChannelPruning(channel_ratio=0.25, importance=importance, min_channels=1),
            LayerwiseReconstruction(ridge=1e-6),
        ]
        result = graphopt.optimize(model, x[:1], passes, calibration_data=batches)
        assert result.model.get_submodule("2").in_features == 3  # structure: one channel gone
        outputs[importance] = result.model(x)
    want = model(x)
    error = {k: float((v - want).norm() / want.norm()) for k, v in outputs.items()}
    assert error["output_error"] < 1e-4  # the duplicate went, the refit absorbed it
    assert error["l1"] > 1e-2  # magnitude removed the small but unique channel


def two_groups() -> tuple[nn.Module, torch.Tensor]:
    """Linear 4→8 → ReLU → Linear 8→8 → ReLU → Linear 8→3; the head ignores hidden-2 channels
    4..7 (zero columns): removing them changes nothing, any other removal changes the output."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[2].bias.fill_(0.5)
        model[4].weight[:, 4:] = 0
    return model.eval(), torch.randn(N, 4)


def test_sensitivity_takes_the_removals_that_cost_nothing():
    model, x = two_groups()
    batches = [(x[i : i + 128],) for i in range(0, N, 128)]
    pruning = ChannelPruning(channel_ratio=0.25, scope="sensitivity", min_channels=1)
    result = graphopt.optimize(model, x[:1], [pruning], calibration_data=batches)
    pruned = result.model
    assert pruned.get_submodule("0").out_features == 8
    assert pruned.get_submodule("2").out_features == 4
    assert torch.allclose(pruned(x), model(x), atol=1e-5)
    notes = result.report.passes[0].notes
    assert any("channels kept per thinned group" in n and "4/8" in n for n in notes)


@pytest.mark.parametrize(
    "pruning",
    [
        ChannelPruning(ratio=0.3, importance="output_error"),
        ChannelPruning(ratio=0.3, scope="sensitivity"),
    ],
)
def test_data_aware_pruning_needs_calibration_data_before_any_work(pruning):
    model, x = two_groups()
    with pytest.raises(ConfigError, match="calibration_data"):
        graphopt.optimize(model, x[:1], [pruning])


def test_output_error_on_a_residual_cnn_meets_the_target_and_runs():
    from graphopt.testing.zoo import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    x = torch.randn(64, 3, 32, 32)
    batches = [(x[i : i + 32],) for i in range(0, 64, 32)]
    for scope in ("global", "uniform"):
        pruning = ChannelPruning(ratio=0.4, importance="output_error", scope=scope)
        result = graphopt.optimize(model, x[:1], [pruning], calibration_data=batches)
        metrics = result.report.passes[0].metrics
        assert metrics["achieved_macs_reduction"] >= 0.4 - 0.02
        assert result.model(x).shape == (64, 10)
