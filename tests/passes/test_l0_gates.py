"""L0Gates: gates multiply every member of a coupled channel, the penalty is the expected
MAC-weighted open count (hand-checked), training is deterministic and closes gates, closed
gates are cut first and the result is physically smaller."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

import graphopt
from graphopt.channels import build_channel_graph, find_groups
from graphopt.errors import ConfigError
from graphopt.passes import ChannelPruning, KnowledgeDistillation, L0Gates
from graphopt.passes.compress.l0_gates import BETA, GAMMA, ZETA, Gates, channel_costs
from tests.models import labelled_batches, small_classifier


def _pass(strength: float, steps: int = 20) -> L0Gates:
    return L0Gates(
        strength=strength,
        training=KnowledgeDistillation(steps=steps, lr=0.05, progress=False),
        pruning=ChannelPruning(ratio=0.4, importance="l2"),
    )


def _gm_and_groups():
    gm = graphopt.capture(small_classifier(), torch.randn(1, 3, 6, 6))
    groups = [g for g in find_groups(build_channel_graph(gm)) if g.prunable]
    first = next(g for g in groups if any(d.owner == "0.weight" for d in g.dims))
    return gm, groups, first


def test_a_closed_gate_zeroes_every_member_of_its_channel_and_folds_exactly():
    gm, _, first = _gm_and_groups()
    gates = Gates(gm, [first], [1.0], init_open=0.9)
    with torch.no_grad():
        gates.log_alpha[0][2] = -10.0  # test-time gate exactly 0
        gates.log_alpha[0][5] = 10.0  # exactly 1
    x = torch.randn(2, 3, 6, 6)
    with gates.attached():
        gm.eval()
        gated = gm(x)
        conv1 = gm.get_submodule("0")
        assert torch.all(conv1.weight[2] == 0) and conv1.bias[2] == 0
        assert torch.all(gm.get_submodule("3").weight[:, 2] == 0)
        assert gm.get_submodule("1").weight[2] == 0
    assert not any("parametrizations" in n for n, _ in gm.named_parameters())
    assert not hasattr(gm, "_l0_gates")
    torch.testing.assert_close(gm(x), gated)  # the folded weights compute what the gates did
    assert torch.all(gm.get_submodule("0").weight[2] == 0)


def test_penalty_is_the_mac_weighted_open_probability():
    gm, _, first = _gm_and_groups()
    gates = Gates(gm, [first], [2.0], init_open=0.8)
    la = math.log(0.8 / 0.2)
    want = 2.0 * 8 / (1 + math.exp(-(la - BETA * math.log(-GAMMA / ZETA))))
    assert float(gates.penalty().detach()) == pytest.approx(want, rel=1e-6)
    assert gates.expected_open() == pytest.approx(want / 8, rel=1e-6)


def test_channel_costs_are_relative_macs_per_channel():
    gm, groups, first = _gm_and_groups()
    costs = channel_costs(gm, groups)
    channels = [g.num_channels for g in groups]
    mean = sum(c * n for c, n in zip(costs, channels, strict=True)) / sum(channels)
    assert mean == pytest.approx(1.0)
    assert all(c > 0 for c in costs)


def test_training_samples_gates_in_train_mode_only():
    gm, _, first = _gm_and_groups()
    gates = Gates(gm, [first], [1.0], init_open=0.6)
    x = torch.randn(2, 3, 6, 6)
    with gates.attached():
        gm.train()
        torch.manual_seed(0)
        a = gm(x)
        b = gm(x)
        assert not torch.equal(a, b)  # a fresh draw per forward
        gm.eval()
        torch.testing.assert_close(gm(x), gm(x))


def test_training_is_seeded_closes_gates_and_meets_the_target():
    data = labelled_batches()
    runs = [
        graphopt.optimize(
            small_classifier(), torch.randn(1, 3, 6, 6), [_pass(5.0, 70)], training_data=data
        )
        for _ in range(2)
    ]
    a, b = (r.model.state_dict() for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = runs[0].report.passes[0].metrics
    assert metrics["open_after"] < metrics["open_before"]
    assert 1 <= metrics["gates_closed"] < 16  # of 16: some closed, not all
    assert metrics["achieved_macs_reduction"] >= 0.4
    assert runs[0].model.get_submodule("0").out_channels < 8  # physically smaller
    x = torch.randn(3, 3, 6, 6)
    assert runs[0].model(x).shape == (3, 4)


def test_a_stronger_penalty_closes_more_gates():
    data = labelled_batches()
    closed = {
        s: graphopt.optimize(
            small_classifier(), torch.randn(1, 3, 6, 6), [_pass(s, 40)], training_data=data
        )
        .report.passes[0]
        .metrics["open_after"]
        for s in (0.0, 5.0)
    }
    assert closed[5.0] < closed[0.0]


def test_needs_training_data_before_any_pass_runs():
    with pytest.raises(ConfigError, match="training"):
        graphopt.optimize(small_classifier(), torch.randn(1, 3, 6, 6), [_pass(1.0)])


@pytest.mark.parametrize("kwargs", [{"strength": -1}, {"init_open": 0.4}, {"bogus": 1}])
def test_invalid_configs_fail_at_construction(kwargs):
    with pytest.raises(pydantic.ValidationError):
        L0Gates(**kwargs)
