"""Recipes: one pydantic model; errors carry their path in the file and its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from graphopt.errors import RecipeError
from graphopt.passes import EliminateDeadCode, FoldBatchNorm
from graphopt.recipe import Recipe, dump_recipe, format_path, load_recipe, parse_recipe
from graphopt.runner import run_recipe, write_outputs

ROOT = Path(__file__).resolve().parents[2]

GOOD = textwrap.dedent("""
    model:
      python: "tests.models:conv_bn_model"
    inputs:
      - shape: [2, 3, 8, 8]
    passes:
      - pass: fold_batch_norm
        exclude: ["0.*"]
      - pass: eliminate_dead_code
    seed: 3
""")


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(textwrap.dedent(text))
    return [str(p) for p in info.value.problems]


def test_a_valid_recipe_builds_pass_instances():
    recipe = parse_recipe(GOOD)
    assert recipe.passes == [FoldBatchNorm(exclude=["0.*"]), EliminateDeadCode()]
    assert recipe.inputs[0].shape == [2, 3, 8, 8]
    inputs = recipe.example_inputs()
    assert inputs[0].shape == (2, 3, 8, 8)
    torch.testing.assert_close(inputs[0], recipe.example_inputs()[0])  # seeded


def test_wrong_pass_field_has_its_path_and_line():
    found = problems("""
        model: {torchvision: resnet18}
        inputs: [{shape: [1, 3, 32, 32]}]
        passes:
          - pass: fold_batch_norm
          - pass: remove_identity
            include: 3
    """)
    assert found == ["passes[1].include: Input should be a valid tuple (line 7)"]


def test_every_problem_is_reported_at_once():
    found = problems("""
        model: {torchvision: resnet18, weights: imagenet}
        inputs: []
        passes:
          - pass: fold_batchnorm
          - pass: eliminate_dead_code
            ratio: 0.5
          - remove_identity
        output: somewhere
    """)
    paths = [p.split(":")[0] for p in found]
    assert paths == [
        "passes[0].pass",
        "passes[1].ratio",
        "passes[2]",
        "model.torchvision.weights",
        "inputs",
        "output",
    ]
    assert "did you mean fold_batch_norm" in found[0]
    assert "(line 5)" in found[0]


def test_missing_model_and_unknown_source_kind():
    assert problems("inputs: [{shape: [1]}]") == ["model: Field required"]
    assert problems("model: {keras: m.h5}\ninputs: [{shape: [1]}]")[0].startswith(
        "model: give one of 'torchvision', 'python', 'graph_module' or 'onnx'"
    )


def test_malformed_yaml_and_non_mapping():
    assert "not valid YAML" in problems("model: [unclosed")[0]
    assert problems("- just\n- a list") == ["<recipe>: a recipe must be a mapping"]


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "nope.yaml")


def test_json_recipes_work_and_round_trip(tmp_path):
    recipe = parse_recipe(GOOD)
    path = tmp_path / "recipe.json"
    path.write_text(dump_recipe(recipe))
    again, base = load_recipe(path)
    assert again == recipe and base == tmp_path
    assert json.loads(path.read_text())["passes"][0] == {
        "pass": "fold_batch_norm",
        "include": [],
        "exclude": ["0.*"],
        "module_types": [],
    }


def test_run_and_write_outputs_then_reload_the_saved_graph(tmp_path):
    recipe = parse_recipe(GOOD)
    result = run_recipe(recipe, ROOT)
    assert result.report.passes[0].touched == ["1.conv1", "1.conv2"]
    write_outputs(result, recipe, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.pt",
        "report.json",
        "report.html",
        "recipe.json",
        "graph.py",
    }
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passes"][0]["name"] == "fold_batch_norm"

    reloaded = parse_recipe("model: {graph_module: model.pt}\ninputs: [{shape: [2, 3, 8, 8]}]\n")
    model = reloaded.model.build(tmp_path)
    x = recipe.example_inputs()[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x))


def test_leaf_types_resolve_at_the_recipe_boundary():
    recipe = parse_recipe(
        textwrap.dedent("""
        model: {python: "tests.models:NeedsLeaf"}
        inputs: [{shape: [1, 3, 4, 4]}]
        capture: {leaf_types: [tests.models.DataDependentBranch]}
    """)
    )
    from tests.models import DataDependentBranch

    assert recipe.capture.leaf_types == [DataDependentBranch]
    result = run_recipe(recipe, ROOT)
    assert any(n.target == "gate" for n in result.model.graph.nodes)


def test_integer_inputs_respect_their_range():
    recipe = parse_recipe(
        "model: {torchvision: resnet18}\ninputs: [{shape: [2, 16], dtype: int64, low: 5, high: 9}]"
    )
    (ids,) = recipe.example_inputs()
    assert ids.dtype == torch.int64 and ids.min() >= 5 and ids.max() < 9


def test_format_path():
    assert format_path(("passes", 1, "ratio")) == "passes[1].ratio"
    assert format_path(("passes[2]", "include", 0)) == "passes[2].include[0]"
    assert format_path(("model", "torchvision")) == "model.torchvision"


def test_recipe_is_a_python_object_too():
    recipe = Recipe(
        model={"torchvision": "resnet18"},
        inputs=[{"shape": [1, 3, 32, 32]}],
        passes=[FoldBatchNorm()],
    )
    assert recipe.passes[0].name == "fold_batch_norm"
