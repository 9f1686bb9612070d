"""Run a recipe: build the model, optimize it, write the results to the output directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from graphopt.api import OptimizeResult, optimize
from graphopt.errors import ConfigError, RecipeError, RecipeProblem
from graphopt.frontend.model_file import save_model
from graphopt.pass_manager import PassObserver
from graphopt.recipe import FactoryError, Recipe, dump_recipe
from graphopt.recipe_text import located_error
from graphopt.report_html import render


def run_recipe(
    recipe: Recipe,
    base_dir: Path,
    observer: PassObserver | None = None,
    source: str | Path | None = None,
) -> OptimizeResult:
    """Build the recipe's model (in its mode), and optimize it with the recipe's passes.

    ``source`` (the recipe file) locates the failures of model sources and factories in it."""
    model = _factory(recipe.model.build, base_dir, "model.python", source)
    model.train(recipe.capture.mode == "train")
    sources = recipe.data
    data = {
        name: _factory(factory.call, base_dir, f"data.{name}.python", source) if factory else None
        for name, factory in (
            ("calibration", sources.calibration),
            ("training", sources.training),
            ("validation", sources.validation),
        )
    }
    return optimize(
        model,
        recipe.example_inputs(),
        recipe.passes,
        target=recipe.compile.target if recipe.compile else None,
        tuning=recipe.compile.tuning if recipe.compile else None,
        baseline=recipe.compile.baseline if recipe.compile else None,
        leaf_modules=recipe.capture.leaf_modules,
        leaf_types=recipe.capture.leaf_types,
        calibration_data=data["calibration"],
        training_data=data["training"],
        validation=data["validation"],
        seed=recipe.seed,
        observer=observer,
    )


def _factory(call, base_dir: Path, path: str, source):
    try:
        return call(base_dir)
    except FactoryError as exc:
        path = exc.field or path
        if source is None:
            raise RecipeError("<recipe>", [RecipeProblem(path, str(exc))]) from exc
        raise located_error(source, path, str(exc)) from exc


def check_output_dir(out_dir: Path, recipe_dir: Path | None = None) -> None:
    """The output directory can be created and written, and is not the filesystem root or a
    directory holding the recipe's own (checked before the run)."""
    out_dir = out_dir.resolve()
    if out_dir == Path(out_dir.anchor):
        raise ConfigError(f"output directory {out_dir} is the filesystem root")
    if recipe_dir is not None and out_dir in recipe_dir.resolve().parents:
        raise ConfigError(
            f"output directory {out_dir} contains the recipe's directory; write to a "
            "directory of its own (e.g. output_dir: out)"
        )
    for parent in (out_dir, *out_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output directory {out_dir}: {parent} is a file")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"output directory {out_dir}: {parent} is not writable")
            return


def write_outputs(result: OptimizeResult, recipe: Recipe, out_dir: Path) -> list[Path]:
    """Write ``model.pt`` (the GraphModule as data: :func:`graphopt.load_model` reads it without
    running code), ``report.json``, ``recipe.json``, ``graph.py``, and the compiled
    ``artifact/`` directory when the recipe compiles."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "model.pt": lambda p: save_model(result.model, p),
        "report.json": lambda p: p.write_text(result.report.model_dump_json(indent=2)),
        "recipe.json": lambda p: p.write_text(dump_recipe(recipe)),
        "graph.py": lambda p: p.write_text(result.model.code),
        "report.html": lambda p: p.write_text(render(result.report, _latency(result, recipe))),
    }
    written = []
    for name, write in files.items():
        write(out_dir / name)
        written.append(out_dir / name)
    if result.artifact is not None:
        written.append(result.artifact.save(out_dir / "artifact"))
    return written


def _latency(result: OptimizeResult, recipe: Recipe) -> dict[str, float] | None:
    """Median ms of the artifact and of the rewritten graph in eager on the example inputs,
    measured side by side (None when nothing was compiled or this host cannot run it)."""
    artifact = result.artifact
    if artifact is None or artifact.runnable is not None:
        return None
    import torch

    from graphopt.compiler.measure.benchmark import time_interleaved

    inputs = recipe.example_inputs()
    arrays = [x.numpy() for x in inputs]

    def eager():
        with torch.no_grad():
            return result.model(*inputs)

    timings = time_interleaved(
        {
            "pytorch eager": eager,
            f"graphopt ({artifact.manifest.target.name})": lambda: artifact(*arrays),
        },
        rounds=10,
        warmup=2,
    )
    return {name: t.median_ms for name, t in timings.items()}


def load_report(path: Path) -> dict:
    """A written report, as plain data."""
    return json.loads(Path(path).read_text())
