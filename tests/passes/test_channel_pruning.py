"""ChannelPruning: config, structure (physically smaller), numbers, budget, report, declines."""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes import ChannelPruning
from graphopt.testing.zoo import CifarResNet
from tests.models import ResidualBlock, randomize_batch_norm


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = ResidualBlock(16)
        self.mid = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.block(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.mid(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


X = torch.randn(2, 3, 16, 16)


def small():
    torch.manual_seed(0)
    return randomize_batch_norm(Small()).eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ratio=1.5),
        dict(ratio=0),
        dict(),
        dict(ratio=0.5, channel_ratio=0.5),
        dict(ratio=0.5, importance="l3"),
        dict(ratio=0.5, scope="local"),
        dict(ratio=0.5, round_to=0),
        dict(ratio=0.5, bogus=1),
    ],
)
def test_invalid_configs_fail_at_construction(kwargs):
    with pytest.raises(pydantic.ValidationError):
        ChannelPruning(**kwargs)


def test_model_is_physically_smaller_and_consistent():
    model = small()
    result = graphopt.optimize(model, X, [ChannelPruning(ratio=0.5)])
    gm = result.model
    assert gm(X).shape == model(X).shape
    for name, m in gm.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups), name
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape == m.weight.shape == (m.num_features,), name
        if isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
    assert gm.stem.out_channels == gm.block.conv2.out_channels == gm.block.conv1.in_channels < 16
    assert gm.fc.out_features == 5  # the model's output dim is never pruned
    report = result.report.passes[0]
    assert report.metrics["achieved_macs_reduction"] == pytest.approx(0.5, abs=0.03)
    assert result.report.after.macs == pytest.approx(0.5 * result.report.before.macs, rel=0.06)
    torch.export.export(gm, (X,))


def test_pruning_dead_channels_is_exact():
    model = small()
    with (
        torch.no_grad()
    ):  # channels 1, 4 and 7 of the inner group are dead: zero weights in and out
        for c in (1, 4, 7):
            model.block.conv1.weight[c] = 0
            model.block.conv2.weight[:, c] = 0
    result = graphopt.optimize(
        model, X, [ChannelPruning(channel_ratio=0.05, include=["block.conv1", "block.bn1"])]
    )
    assert result.model.block.conv1.out_channels < 16
    assert result.report.passes[0].touched == ["block.bn1", "block.conv1", "block.conv2"]
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), model(X), rtol=1e-5, atol=1e-6)


def test_uniform_channel_ratio_thins_every_group_alike():
    result = graphopt.optimize(small(), X, [ChannelPruning(channel_ratio=0.5, scope="uniform")])
    gm = result.model
    assert (
        gm.block.conv1.out_channels == 8 and gm.stem.out_channels == 8 and gm.mid.out_channels == 16
    )


def test_round_to_and_limits():
    result = graphopt.optimize(small(), X, [ChannelPruning(ratio=0.4, round_to=4, min_channels=4)])
    gm = result.model
    for m in (gm.stem, gm.block.conv1, gm.mid):
        assert m.out_channels % 4 == 0 and m.out_channels >= 4


def test_overrides_and_producer_based_exclude():
    keep_block = graphopt.optimize(
        small(),
        X,
        [ChannelPruning(ratio=0.3, overrides=[{"include": ["block.*"], "max_channel_ratio": 0}])],
    ).model
    assert keep_block.block.conv1.out_channels == 16
    assert keep_block.block.conv2.out_channels == 16  # the stream touches block.conv2 too
    # excluding conv2 keeps conv2's *outputs* (the stream) but still thins its inputs
    no_stream = graphopt.optimize(
        small(), X, [ChannelPruning(ratio=0.3, exclude=["block.conv2"])]
    ).model
    assert no_stream.stem.out_channels == 16 and no_stream.block.conv1.out_channels < 16


def test_frozen_groups_are_declined_with_the_op_that_froze_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(F.relu(self.b(torch.cumsum(self.a(x), dim=1))))

    report = graphopt.optimize(Net(), X, [ChannelPruning(ratio=0.3)]).report.passes[0]
    frozen = [d for d in report.declined if d.target == "a"]
    assert frozen and "no channel rule for torch.cumsum" in frozen[0].reason
    assert report.touched == ["b", "c"]


def test_unreachable_target_is_reported_not_silently_missed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    report = graphopt.optimize(model, X, [ChannelPruning(ratio=0.9)]).report.passes[0]
    assert any("target unreachable" in n for n in report.notes)
    assert report.metrics["achieved_macs_reduction"] < 0.9


def test_taylor_needs_calibration_data_and_uses_it():
    with pytest.raises(ConfigError, match="calibration_data"):
        graphopt.optimize(small(), X, [ChannelPruning(ratio=0.3, importance="taylor")])
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))) for _ in range(2)]
    result = graphopt.optimize(
        small(), X, [ChannelPruning(ratio=0.3, importance="taylor")], calibration_data=batches
    )
    assert "cross-entropy" in result.report.passes[0].notes[0]


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random"])
def test_every_importance_prunes_cifar_resnet(importance):
    model = CifarResNet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    result = graphopt.optimize(model, x, [ChannelPruning(ratio=0.5, importance=importance)])
    assert result.model(x).shape == (2, 10)
    # within the 5 points the budget allows: with random init every BN scale is 1 (all tied),
    # and one channel of a 16-wide coupled stream is ~4 % of ResNet-20's MACs
    assert result.report.passes[0].metrics["achieved_macs_reduction"] == pytest.approx(
        0.5, abs=0.05
    )


def test_input_model_is_untouched():
    model = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphopt.optimize(model, X, [ChannelPruning(ratio=0.5)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_iterative_pruning_reaches_the_target_in_rounds():
    result = graphopt.optimize(small(), X, [ChannelPruning(ratio=0.5, iterations=3)])
    report = result.report.passes[0]
    assert [n.split(":")[0] for n in report.notes] == ["round 1", "round 2", "round 3"]
    assert report.metrics["achieved_macs_reduction"] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(pydantic.ValidationError, match="iterations"):
        ChannelPruning(channel_ratio=0.5, iterations=2)


def test_a_break_no_thinned_group_explains_is_an_unsupported_graph_error(monkeypatch):
    """When the cut graph fails at a node that no thinned group reaches (a surgery gap, here
    simulated), the pass refuses with the node named instead of guessing what to undo."""
    from graphopt.errors import UnsupportedGraphError
    from graphopt.passes.compress.channel_pruning import pruner

    monkeypatch.setattr(pruner, "try_prune", lambda gm, removed, ctx: (None, ("ghost", "boom")))
    with pytest.raises(UnsupportedGraphError) as info:
        graphopt.optimize(
            ResidualBlock().eval(), torch.randn(1, 8, 8, 8), [ChannelPruning(channel_ratio=0.5)]
        )
    assert info.value.pass_name == "channel_pruning"
    assert [(i.node, i.reason) for i in info.value.issues] == [("ghost", "boom")]
