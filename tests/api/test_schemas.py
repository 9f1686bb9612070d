"""Committed JSON Schemas and the pass reference match what the code generates."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from graphopt.recipe import parse_recipe
from graphopt.schema_export import SCHEMA_DIR, generated_files, stale_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RECIPES = sorted((ROOT / "docs" / "examples").glob("*.yaml"))


def test_committed_schemas_are_up_to_date():
    stale = [str(p.relative_to(ROOT)) for p in stale_files()]
    assert stale == [], "run `python -m graphopt.schema_export` (or `make schemas`) and commit"


def test_every_builtin_pass_has_a_schema():
    names = {p.name for p in generated_files()}
    for expected in (
        "recipe",
        "report",
        "fold_batch_norm",
        "remove_identity",
        "eliminate_dead_code",
    ):
        assert f"{expected}.schema.json" in names


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=lambda p: p.name)
def test_example_recipes_validate_against_the_committed_schema(path):
    schema = json.loads((SCHEMA_DIR / "recipe.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    parse_recipe(path.read_text())  # and against the pydantic model


def test_schema_rejects_what_pydantic_rejects():
    schema = json.loads((SCHEMA_DIR / "recipe.schema.json").read_text())
    bad = {
        "model": {"torchvision": "resnet18"},
        "inputs": [{"shape": [1, 3, 8, 8]}],
        "passes": [{"pass": "fold_batch_norm", "ratio": 0.5}],
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad["passes"] = [{"pass": "no_such_pass"}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
