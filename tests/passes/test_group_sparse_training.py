"""GroupSparseTraining: the penalty is the group lasso over coupled channels (hand-checked),
training is deterministic and shrinks it, and the cut meets the MAC target."""

from __future__ import annotations

import pydantic
import pytest
import torch

import graphopt
from graphopt.channels import build_channel_graph, find_groups
from graphopt.errors import ConfigError
from graphopt.passes import ChannelPruning, GroupSparseTraining, KnowledgeDistillation
from graphopt.passes.compress.group_sparse_training import GroupNormPenalty
from tests.models import labelled_batches, small_classifier


def _pass(strength: float, steps: int = 10) -> GroupSparseTraining:
    return GroupSparseTraining(
        strength=strength,
        training=KnowledgeDistillation(steps=steps, lr=0.05, progress=False),
        pruning=ChannelPruning(ratio=0.4, importance="l2"),
    )


def test_penalty_is_the_norm_of_each_coupled_channel():
    gm = graphopt.capture(small_classifier(), torch.randn(1, 3, 6, 6))
    groups = [g for g in find_groups(build_channel_graph(gm)) if g.prunable]
    first = next(g for g in groups if any(d.owner == "0.weight" for d in g.dims))
    norms = GroupNormPenalty(gm, [first]).norms()[0]
    conv1, bn, conv2 = gm.get_submodule("0"), gm.get_submodule("1"), gm.get_submodule("3")
    with torch.no_grad():
        want = (
            conv1.weight.pow(2).sum((1, 2, 3))
            + conv1.bias.pow(2)
            + bn.weight.pow(2)
            + bn.bias.pow(2)
            + conv2.weight.pow(2).sum((0, 2, 3))
        ).sqrt()
    torch.testing.assert_close(norms.detach(), want)


def test_training_is_seeded_shrinks_the_penalty_and_meets_the_target():
    data = labelled_batches()
    runs = [
        graphopt.optimize(
            small_classifier(), torch.randn(1, 3, 6, 6), [_pass(0.05)], training_data=data
        )
        for _ in range(2)
    ]
    a, b = (r.model.state_dict() for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = runs[0].report.passes[0].metrics
    assert metrics["penalty_after"] < metrics["penalty_before"]
    assert metrics["achieved_macs_reduction"] >= 0.4
    assert runs[0].model.get_submodule("0").out_channels < 8  # physically smaller


def test_a_stronger_penalty_leaves_smaller_channel_norms():
    data = labelled_batches()
    after = {
        strength: graphopt.optimize(
            small_classifier(),
            torch.randn(1, 3, 6, 6),
            [_pass(strength, steps=30)],
            training_data=data,
        )
        .report.passes[0]
        .metrics["penalty_after"]
        for strength in (1e-5, 0.5)
    }
    assert after[0.5] < 0.8 * after[1e-5]


def test_needs_training_data_before_any_pass_runs():
    with pytest.raises(ConfigError, match="training"):
        graphopt.optimize(small_classifier(), torch.randn(1, 3, 6, 6), [_pass(0.05)])


@pytest.mark.parametrize(
    "kwargs",
    [{"strength": -1}, {"strength": 11}, {"training": {}}, {"pruning": {}}, {"unknown": 1}],
)
def test_invalid_configs_fail_at_construction(kwargs):
    with pytest.raises(pydantic.ValidationError):
        GroupSparseTraining(**kwargs)


def test_a_recipe_nests_the_training_and_the_cut():
    """In a recipe, ``training`` and ``pruning`` are the other passes' configurations; the
    committed schema accepts what pydantic accepts and refuses a bad nested field."""
    import json

    import jsonschema
    import yaml

    from graphopt.recipe import parse_recipe
    from graphopt.schema_export import SCHEMA_DIR

    text = """
model: {torchvision: resnet18}
inputs: [{shape: [1, 3, 32, 32]}]
passes:
  - pass: group_sparse_training
    strength: 1.0e-3
    training: {steps: 5, lr: 0.02}
    pruning: {ratio: 0.3, round_to: 8}
"""
    schema = json.loads((SCHEMA_DIR / "recipe.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(text), schema)
    step = parse_recipe(text).passes[0]
    assert (step.training.steps, step.pruning.ratio, step.pruning.importance) == (5, 0.3, "l1")
    bad = yaml.safe_load(text)
    bad["passes"][0]["pruning"]["ratio"] = 2.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
