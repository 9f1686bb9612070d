"""Every importance criterion against a score computed by hand on a two-layer model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.channels import build_channel_graph, find_groups
from graphopt.frontend.fx import capture
from graphopt.passes.compress.channel_pruning.importance import channel_importance, taylor_gradients


def model_and_group():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.25]))
    model.eval()
    gm = capture(model, (torch.randn(2, 3),))
    group = next(g for g in find_groups(build_channel_graph(gm)) if g.num_channels == 4)
    return model, gm, group


def _normalised(values: np.ndarray) -> np.ndarray:
    return values / values.mean()


def by_hand(model, kind: str, grads=None) -> np.ndarray:
    a, b = model[0].weight.detach().double(), model[3].weight.detach().double()
    if kind == "bn_scale":
        return _normalised(model[1].weight.detach().double().abs().numpy())
    if kind == "taylor":
        a, b = a * grads["0.weight"].double(), b * grads["3.weight"].double()
    if kind == "l2":
        rows, cols = a.pow(2).sum(1).sqrt(), b.pow(2).sum(0).sqrt()
    else:  # l1 and taylor: |·| summed over the other axis
        rows, cols = a.abs().sum(1), b.abs().sum(0)
    members = (_normalised(rows.numpy()) + _normalised(cols.numpy())) / 2
    return _normalised(members)


@pytest.mark.parametrize("kind", ["l1", "l2", "bn_scale"])
def test_weight_criteria_equal_the_hand_computed_score(kind):
    model, gm, group = model_and_group()
    scores, notes = channel_importance(gm, [group], kind)
    assert not notes
    np.testing.assert_allclose(scores[group.index], by_hand(model, kind), rtol=1e-9)


def test_taylor_equals_weight_times_the_accumulated_gradient():
    model, gm, group = model_and_group()
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(3)]
    gradients, loss = taylor_gradients(gm, batches, max_batches=3)
    assert loss == "cross-entropy on labels"
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    expected = {"0.weight": model[0].weight.grad.abs(), "3.weight": model[3].weight.grad.abs()}
    for name in expected:
        torch.testing.assert_close(gradients[name], expected[name])
    scores, _ = channel_importance(gm, [group], "taylor", gradients=gradients)
    np.testing.assert_allclose(scores[group.index], by_hand(model, "taylor", expected), rtol=1e-6)


def test_random_is_seeded_and_differs_between_seeds():
    _, gm, group = model_and_group()
    one = channel_importance(gm, [group], "random", seed=1)[0][group.index]
    again = channel_importance(gm, [group], "random", seed=1)[0][group.index]
    other = channel_importance(gm, [group], "random", seed=2)[0][group.index]
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)
