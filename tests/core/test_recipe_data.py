"""Recipes name python factories for calibration data, training data and validation."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from graphopt.errors import RecipeError
from graphopt.recipe import load_recipe, parse_recipe
from graphopt.runner import run_recipe

FACTORIES = """
import torch
from torch import nn

CALLS = []


def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, 4),
    ).eval()


def batches(count, labels=False):
    g = torch.Generator().manual_seed(count)
    xs = [torch.randn(8, 3, 4, 4, generator=g) * 3 + 1 for _ in range(count)]
    return [(x, torch.zeros(8, dtype=torch.long)) for x in xs] if labels else xs


def score(offset):
    def validate(model):
        CALLS.append(offset)
        return offset
    return validate
"""

RECIPE = """
model: {python: "factories:model"}
inputs: [{shape: [1, 3, 4, 4]}]
passes:
  - {pass: channel_pruning, channel_ratio: 0.5}
  - {pass: batch_norm_recalibration}
  - {pass: knowledge_distillation, steps: 2, label_weight: 1.0, progress: false}
data:
  calibration: {python: "factories:batches", kwargs: {count: 3}}
  training: {python: "factories:batches", kwargs: {count: 2, labels: true}}
  validation: {python: "factories:score", kwargs: {offset: 7}}
"""


def test_factories_feed_calibration_training_and_validation(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    recipe, base = load_recipe(tmp_path / "recipe.yaml")
    result = run_recipe(recipe, base)
    recal, kd = result.report.passes[1], result.report.passes[2]
    assert recal.metrics["batches"] == 3  # the calibration factory's batch count
    assert kd.metrics["steps"] == 2 and kd.metrics["best_validation"] == 7
    factories = sys.modules.pop("factories")  # imported from next to the recipe by the run
    assert factories.CALLS == [7, 7]  # before training and after the last step


def test_a_data_source_must_be_a_factory_reference():
    with pytest.raises(RecipeError, match=r"data.calibration.python"):
        parse_recipe(
            "model: {torchvision: resnet18}\ninputs: [{shape: [1, 3, 8, 8]}]\n"
            "data: {calibration: {python: not-a-reference}}\n"
        )


def test_a_recipe_uses_its_own_factories_not_a_same_named_module_imported_before(tmp_path):
    for name, width in [("first", 4), ("second", 6)]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "factories.py").write_text(
            f"from torch import nn\n\ndef model():\n    return nn.Linear(3, {width}).eval()\n"
        )
        (folder / "recipe.yaml").write_text(
            'model: {python: "factories:model"}\ninputs: [{shape: [1, 3]}]\npasses: []\n'
        )
    widths = []
    try:
        for name in ["first", "second"]:
            recipe, base = load_recipe(tmp_path / name / "recipe.yaml")
            widths.append(run_recipe(recipe, base).model(torch.zeros(1, 3)).shape[-1])
    finally:
        sys.modules.pop("factories", None)
    assert widths == [4, 6]
