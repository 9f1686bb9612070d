"""Run a recipe: build the model, optimize it, write the results to the output directory."""

from __future__ import annotations

import json
from pathlib import Path

from graphopt.api import OptimizeResult, optimize
from graphopt.frontend.model_file import save_model
from graphopt.pass_manager import PassObserver
from graphopt.recipe import Recipe, dump_recipe


def run_recipe(
    recipe: Recipe, base_dir: Path, observer: PassObserver | None = None
) -> OptimizeResult:
    """Build the recipe's model (in its mode), and optimize it with the recipe's passes."""
    model = recipe.model.build(base_dir)
    model.train(recipe.capture.mode == "train")
    sources = recipe.data
    calibration, training, validation = (
        factory.call(base_dir) if factory else None
        for factory in (sources.calibration, sources.training, sources.validation)
    )
    return optimize(
        model,
        recipe.example_inputs(),
        recipe.passes,
        target=recipe.compile.target if recipe.compile else None,
        tuning=recipe.compile.tuning if recipe.compile else None,
        leaf_modules=recipe.capture.leaf_modules,
        leaf_types=recipe.capture.leaf_types,
        calibration_data=calibration,
        training_data=training,
        validation=validation,
        seed=recipe.seed,
        observer=observer,
    )


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
    }
    written = []
    for name, write in files.items():
        write(out_dir / name)
        written.append(out_dir / name)
    if result.artifact is not None:
        written.append(result.artifact.save(out_dir / "artifact"))
    return written


def load_report(path: Path) -> dict:
    """A written report, as plain data."""
    return json.loads(Path(path).read_text())
