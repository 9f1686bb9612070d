"""IterativePruning: MACs fall step by step to the target, recovery runs after every cut, the
report carries per-step numbers, weight rewinding restarts the kept channels from the original
weights, and recipes express it."""

from __future__ import annotations

import pydantic
import pytest
import torch

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes import (
    BatchNormRecalibration,
    ChannelPruning,
    IterativePruning,
    KnowledgeDistillation,
)
from graphopt.passes.compress.iterative_pruning import Recovery
from graphopt.recipe import parse_recipe
from tests.models import labelled_batches, small_classifier


def _run(rewind="none", steps=3, recover=None, validation=None):
    recover = recover or Recovery(
        batch_norm_recalibration=BatchNormRecalibration(),
        knowledge_distillation=KnowledgeDistillation(steps=3, lr=0.05, progress=False),
    )
    p = IterativePruning(
        steps=steps, pruning=ChannelPruning(ratio=0.6), recover=recover, rewind=rewind
    )
    data = labelled_batches()
    return graphopt.optimize(
        small_classifier(16),
        torch.randn(1, 3, 6, 6),
        [p],
        calibration_data=data,
        training_data=data,
        validation=validation,
    )


def test_macs_fall_each_step_to_the_target_with_per_step_numbers():
    result = _run(validation=lambda m: -float(m(torch.ones(1, 3, 6, 6)).abs().sum()))
    metrics = result.report.passes[0].metrics
    reductions = [metrics[f"step{k}_macs_reduction"] for k in (1, 2, 3)]
    assert reductions == sorted(reductions) and reductions[0] > 0.05
    assert reductions[-1] >= 0.6 - 0.05
    assert all(f"step{k}_validation" in metrics for k in (1, 2, 3))
    assert len([n for n in result.report.passes[0].notes if n.startswith("step")]) == 3
    assert result.model.get_submodule("0").out_channels < 16
    assert result.model(torch.randn(2, 3, 6, 6)).shape == (2, 4)


@pytest.mark.parametrize("rewind", ["weights", "none"])
def test_each_cut_restarts_from_the_original_weights_only_when_rewinding(rewind, monkeypatch):
    seen = []  # conv weights as each step's recovery (which trains) receives them
    real = IterativePruning.recovered

    def spy(self, gm, ctx):
        seen.append(gm.get_submodule("0").weight.detach().clone())
        return real(self, gm, ctx)

    monkeypatch.setattr(IterativePruning, "recovered", spy)
    _run(rewind=rewind, steps=2)
    original = small_classifier(16).get_submodule("0").weight
    later = seen[1]  # after one round of training
    from_original = all(any(torch.equal(r, o) for o in original) for r in later)
    assert from_original == (rewind == "weights")


def test_without_rewinding_the_kept_channels_keep_their_training():
    result = _run(rewind="none", steps=2)
    conv, original = result.model.get_submodule("0"), small_classifier(16).get_submodule("0").weight
    assert not all(any(torch.equal(r, o) for o in original) for r in conv.weight)


def test_is_deterministic():
    a, b = (_run(rewind="weights").model.state_dict() for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_needs_a_mac_ratio_and_one_round():
    with pytest.raises(ConfigError, match="iterations: 1"):
        graphopt.optimize(
            small_classifier(16),
            torch.randn(1, 3, 6, 6),
            [IterativePruning(pruning=ChannelPruning(channel_ratio=0.5))],
            calibration_data=labelled_batches(),
        )


def test_needs_the_data_its_stages_read_before_any_work():
    p = IterativePruning(recover=Recovery(knowledge_distillation=KnowledgeDistillation(steps=1)))
    with pytest.raises(ConfigError, match="training"):
        graphopt.optimize(small_classifier(16), torch.randn(1, 3, 6, 6), [p])


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"rewind": "lr"}, {"recover": {"bogus": {}}}])
def test_invalid_configs_fail_at_construction(kwargs):
    with pytest.raises(pydantic.ValidationError):
        IterativePruning(**kwargs)


def test_a_recipe_expresses_the_schedule():
    recipe = parse_recipe(
        """
model: {torchvision: resnet18}
inputs: [{shape: [1, 3, 32, 32]}]
passes:
  - pass: iterative_pruning
    steps: 3
    rewind: weights
    pruning: {ratio: 0.5, importance: l1}
    recover:
      batch_norm_recalibration: {}
      knowledge_distillation: {epochs: 1, lr: 0.01}
"""
    )
    (p,) = recipe.passes
    assert isinstance(p, IterativePruning) and p.steps == 3 and p.rewind == "weights"
    assert [type(s).__name__ for s in p.recover.passes()] == [
        "BatchNormRecalibration",
        "KnowledgeDistillation",
    ]
