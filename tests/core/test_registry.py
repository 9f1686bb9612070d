"""Registry: keyed by class, unique names, built-ins and plugins through entry points."""

from __future__ import annotations

import textwrap
from typing import ClassVar

import pytest
import torch

import graphopt
from graphopt.errors import RegistryError
from graphopt.pass_base import Pass, PassResult
from graphopt.passes import BUILTIN_PASSES, FoldBatchNorm
from graphopt.recipe import parse_recipe
from graphopt.registry import REGISTRY, PassRegistry
from graphopt.runner import run_recipe

PLUGIN_SOURCE = '''
from typing import ClassVar
from pydantic import Field
from graphopt import Pass, PassResult


class NodeCensus(Pass):
    """x ⇒ x: counts call_module nodes of each type into the report (plugin example)."""

    name: ClassVar[str] = "node_census"
    exact: ClassVar[bool] = True
    top: int = Field(default=3, ge=1, description="How many types to report.")

    def run(self, gm, ctx):
        counts = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                kind = type(gm.get_submodule(node.target)).__name__
                counts[kind] = counts.get(kind, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top]
        return PassResult(gm, False, self.report(False, notes=[f"{k}: {n}" for k, n in ranked]))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution installed on sys.path, advertising a pass in the entry-point group."""
    package = tmp_path / "graphopt_census"
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    dist_info = tmp_path / "graphopt_census-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: graphopt-census\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[graphopt.passes]\nnode_census = graphopt_census:NodeCensus\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY.load_entry_points(force=True)
    cls = REGISTRY.resolve("node_census")
    yield cls
    REGISTRY.unregister(cls)


def test_builtins_register_through_entry_points():
    registry = PassRegistry()
    registry.load_entry_points()
    for cls in BUILTIN_PASSES:
        assert registry.resolve(cls.name) is cls


def test_plugin_pass_runs_from_a_recipe(installed_plugin):
    recipe = parse_recipe(
        textwrap.dedent("""
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 8, 8]}]
        passes:
          - pass: fold_batch_norm
          - pass: node_census
            top: 2
    """)
    )
    assert type(recipe.passes[1]) is installed_plugin
    result = run_recipe(recipe, base_dir=graphopt_root())
    census = result.report.passes[1]
    assert census.name == "node_census"
    assert census.notes == ["Conv2d: 3", "ReLU: 1"]


def test_plugin_fields_are_validated(installed_plugin):
    with pytest.raises(graphopt.RecipeError, match=r"passes\[0\]\.top"):
        parse_recipe(
            "model: {torchvision: resnet18}\ninputs: [{shape: [1]}]\n"
            "passes: [{pass: node_census, top: 0}]"
        )


def test_two_classes_cannot_share_a_name():
    class Impostor(Pass):
        """x ⇒ x (test double claiming a built-in's name)."""

        name: ClassVar[str] = "fold_batch_norm"
        exact: ClassVar[bool] = True

        def run(self, gm, ctx):
            return PassResult(gm, False, self.report(False))

    registry = PassRegistry()
    registry.register(FoldBatchNorm)
    registry.register(FoldBatchNorm)  # the same class again is fine
    with pytest.raises(RegistryError, match="claimed by both"):
        registry.register(Impostor)


@pytest.mark.parametrize(
    "body, message",
    [
        ('name: ClassVar[str] = "Bad Name"\n    exact: ClassVar[bool] = True', "snake_case"),
        ('name: ClassVar[str] = "no_exact"', "exact"),
    ],
)
def test_registration_validates_declarations(body, message):
    namespace = {"ClassVar": ClassVar, "Pass": Pass, "PassResult": PassResult}
    exec(  # noqa: S102 - builds small invalid classes
        f'class Bad(Pass):\n    """x ⇒ x."""\n    {body}\n'
        "    def run(self, gm, ctx):\n        return PassResult(gm, False, self.report(False))\n",
        namespace,
    )
    with pytest.raises(RegistryError, match=message):
        PassRegistry().register(namespace["Bad"])


def test_abstract_and_foreign_classes_are_refused():
    with pytest.raises(RegistryError, match="abstract"):
        PassRegistry().register(Pass)
    with pytest.raises(RegistryError, match="not a subclass"):
        PassRegistry().register(torch.nn.Conv2d)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(RegistryError, match="did you mean fold_batch_norm"):
        REGISTRY.resolve("fold_batchnorm")


def test_broken_plugin_is_reported_not_hidden(tmp_path, monkeypatch):
    dist_info = tmp_path / "broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[graphopt.passes]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = PassRegistry()
    with pytest.warns(UserWarning, match="'broken' failed to load"):
        registry.load_entry_points()
    assert registry.resolve("fold_batch_norm") is FoldBatchNorm
    with pytest.raises(RegistryError, match="failed to load"):
        registry.resolve("broken")


def graphopt_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
