"""The stable public surface: names and signatures. A change here is an API change: update
the snapshot on purpose, and say so in the changelog."""

from __future__ import annotations

import inspect

import graphopt

EXPECTED_ALL = {
    "REGISTRY",
    "RPC",
    "Artifact",
    "ArtifactError",
    "CompileError",
    "Manifest",
    "Tuning",
    "compile",
    "load",
    "CaptureError",
    "ConfigError",
    "Decline",
    "GraphOptError",
    "ModelFileError",
    "MatchResult",
    "ModelStats",
    "OptimizeReport",
    "OptimizeResult",
    "Pass",
    "PassContext",
    "PassError",
    "PassManager",
    "PassReport",
    "PassResult",
    "Recipe",
    "RecipeError",
    "RegistryError",
    "Rule",
    "UnsupportedGraphError",
    "VerificationError",
    "apply_rules",
    "capture",
    "load_model",
    "load_recipe",
    "optimize",
    "parse_recipe",
    "register_pass",
    "save_model",
}

TUNING_DEFAULT = (
    "Tuning(trials=None, per_task=8, per_iter=8, cache_dir=None, default_variants=6, transfer=2, rpc=None, "
    "progress=True, seed=0)"
)
SIGNATURES = {
    "optimize": "(model: 'nn.Module', example_inputs: 'ExampleInputs', "
    "passes: 'Sequence[Pass]' = (), target: 'str | dict | None' = None, *, "
    f"tuning: 'Tuning | None' = {TUNING_DEFAULT}, "
    "leaf_modules: 'Iterable[str]' = (), leaf_types: 'Iterable[type[nn.Module]]' = (), "
    "calibration_data: 'Iterable[Any] | None' = None, "
    "training_data: 'Iterable[Any] | None' = None, "
    "validation: 'Callable[[nn.Module], float] | None' = None, "
    "original: 'nn.Module | None' = None, seed: 'int' = 0, "
    "observer: 'PassObserver | None' = None, baseline: 'Baseline | None' = None) "
    "-> 'OptimizeResult'",
    "capture": "(model: 'nn.Module | str | Path', example_inputs: 'ExampleInputs | None' = None, "
    "*, leaf_modules: 'Iterable[str]' = (), "
    "leaf_types: 'Iterable[type[nn.Module]]' = ()) -> 'fx.GraphModule'",
    "compile": "(model: 'nn.Module', example_inputs: 'ExampleInputs', "
    f"target: 'str | dict' = 'llvm', tuning: 'Tuning | None' = {TUNING_DEFAULT}, *, "
    "report: 'OptimizeReport | None' = None, winograd: 'bool' = True, "
    "baseline: 'Baseline | None' = None) -> 'Artifact'",
    "load": "(directory: 'str | Path', threads: 'int | None' = None, *, "
    "key: 'bytes | str | None' = None) -> 'Artifact'",
    "save_model": "(gm: 'fx.GraphModule', path: 'str | Path') -> 'Path'",
    "load_model": "(path: 'str | Path', *, trust: 'bool' = False) -> 'fx.GraphModule'",
    "apply_rules": "(gm: 'fx.GraphModule', rules: 'tuple[Rule, ...]', selected) -> 'RuleOutcome'",
}


def test_all_is_the_expected_surface():
    assert set(graphopt.__all__) == EXPECTED_ALL
    for name in graphopt.__all__:
        assert hasattr(graphopt, name), name


def test_signatures_are_stable():
    for name, expected in SIGNATURES.items():
        assert str(inspect.signature(getattr(graphopt, name))) == expected, name


def test_pass_result_and_context_fields_are_stable():
    assert [f for f in graphopt.PassResult.__dataclass_fields__] == ["graph", "modified", "report"]
    assert list(graphopt.PassContext.__dataclass_fields__) == [
        "example_inputs",
        "calibration_data",
        "training_data",
        "validation",
        "seed",
        "history",
        "original",
    ]
    assert set(graphopt.Pass.model_fields) == {"include", "exclude", "module_types"}
