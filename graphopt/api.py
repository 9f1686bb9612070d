"""``optimize``: capture → passes (verified after each) → report. Orchestration only."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from graphopt.analysis.cost import layer_changes, model_stats
from graphopt.analysis.shapes import propagate_shapes
from graphopt.compiler.artifact import Artifact
from graphopt.compiler.build import DEFAULT_TUNING
from graphopt.compiler.build import compile as compile_model
from graphopt.compiler.measure.baseline import Baseline, validate_baseline
from graphopt.compiler.targets import resolve_target
from graphopt.compiler.tune.tuning import Tuning
from graphopt.errors import ConfigError
from graphopt.frontend.fx import ExampleInputs, as_input_tuple, capture
from graphopt.pass_base import Pass, PassContext
from graphopt.pass_manager import PassManager, PassObserver, check_data
from graphopt.report import OptimizeReport


@dataclass(frozen=True)
class OptimizeResult:
    """The rewritten graph, the report, and the compiled artifact when a target was given."""

    model: fx.GraphModule
    report: OptimizeReport
    artifact: Artifact | None = None


def optimize(
    model: nn.Module,
    example_inputs: ExampleInputs,
    passes: Sequence[Pass] = (),
    target: str | dict | None = None,
    *,
    tuning: Tuning | None = DEFAULT_TUNING,
    leaf_modules: Iterable[str] = (),
    leaf_types: Iterable[type[nn.Module]] = (),
    calibration_data: Iterable[Any] | None = None,
    training_data: Iterable[Any] | None = None,
    validation: Callable[[nn.Module], float] | None = None,
    original: nn.Module | None = None,
    seed: int = 0,
    observer: PassObserver | None = None,
    baseline: Baseline | None = None,
) -> OptimizeResult:
    """Capture ``model``, run ``passes`` in order (verifying after each), and report.

    ``model`` is never changed: the graph is captured from a deep copy. A ``GraphModule``
    (e.g. a saved result) is taken as already captured. With a ``target``, the rewritten
    graph is compiled (see :func:`graphopt.compile`, which gets ``tuning``) and the artifact,
    whose manifest carries the report, is on ``result.artifact``; ``baseline``
    (``"onnxruntime"`` or ``"eager"``) times it against that runtime (the manifest's
    ``baseline``; a warning when it is not faster).

    Recovery passes read ``calibration_data`` (input batches, or ``(inputs, labels)`` batches
    such as a DataLoader yields) and ``training_data`` (fine-tuning batches; default: the
    calibration data); ``validation(model) -> score`` (higher is better) picks the checkpoint
    a fine-tuning pass keeps. ``original`` is what recovery passes reproduce (the teacher of
    distillation, the layer outputs reconstruction matches); by default ``model`` itself, as
    captured before the first pass. Give it when ``model`` was already compressed elsewhere.
    """
    if not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    manager = PassManager(passes, observer=observer)
    if target is not None:
        validate_baseline(baseline, resolve_target(target))  # a typo fails now, not at the end
    elif baseline is not None:
        raise ConfigError(f"baseline {baseline!r} needs a target to compile for")
    check_data(manager.passes, calibration_data, training_data)
    start = time.perf_counter()
    inputs = as_input_tuple(example_inputs)
    gm = _as_graph(model, inputs, leaf_modules, leaf_types)
    reference = propagate_shapes(gm, inputs)  # capture's run, not repeated (same graph, inputs)
    before = model_stats(gm)
    ctx = PassContext(
        example_inputs=inputs,
        calibration_data=calibration_data,
        training_data=training_data,
        validation=validation,
        seed=seed,
        original=None
        if original is None
        else _as_graph(original, inputs, leaf_modules, leaf_types),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        result, reports = manager.run(gm, ctx, reference)
    report = OptimizeReport(
        model=type(model).__name__,
        input_shapes=[list(x.shape) for x in inputs],
        capture_route=gm.meta.get("capture_route", "graph"),
        before=before,
        after=model_stats(result),
        passes=reports,
        seconds=time.perf_counter() - start,
        layers=layer_changes(gm, result),
    )
    artifact = None
    if target is not None:
        artifact = compile_model(result, inputs, target, tuning, report=report, baseline=baseline)
    return OptimizeResult(model=result, report=report, artifact=artifact)


def _as_graph(model, inputs, leaf_modules, leaf_types) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        gm = copy.deepcopy(model)
        gm.meta["capture_route"] = "graph"
        return gm
    return capture(model, inputs, leaf_modules=leaf_modules, leaf_types=leaf_types)
