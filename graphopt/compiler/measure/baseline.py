"""The never-slower check: an artifact timed against ONNX Runtime or PyTorch eager.

A compressed model that runs slower than the original in ONNX Runtime is worth nothing to its
user, so ``graphopt.compile(..., baseline="onnxruntime" | "eager")`` measures it: the artifact
and the baseline on the example inputs, interleaved, on the same number of threads, with the
timing code the benchmarks use (:func:`.benchmark.time_interleaved`: each turn runs 0.25 s of
unrecorded calls, then records 3). The figures go into the manifest (``baseline``), and a slower
artifact raises a :class:`SlowerThanBaselineWarning`. Both baselines run from the artifact's own
portable files (``model.onnx``, ``model.pt2``), so ``graphopt bench`` re-measures the ratio on
another day or machine without the original model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from graphopt.compiler.measure.benchmark import time_interleaved

Baseline = Literal["onnxruntime", "eager"]
BASELINES: tuple[Baseline, ...] = ("onnxruntime", "eager")
ROUNDS = 20
# unrecorded calls at the start of each turn: the other runtime's workers stop spinning and
# the contender's own wake up (see benchmark.time_interleaved)
WARM_S = 0.25


class SlowerThanBaselineWarning(UserWarning):
    """The compiled artifact measured slower than the baseline it was checked against."""


class BaselineCheck(BaseModel):
    """One side-by-side measurement of the artifact against a baseline runtime."""

    model_config = ConfigDict(extra="forbid")

    baseline: Baseline
    artifact_ms: float = Field(ge=0, description="Median ms per call of the artifact.")
    baseline_ms: float = Field(ge=0, description="Median ms per call of the baseline.")
    ratio: float = Field(ge=0, description="artifact_ms / baseline_ms (below 1: faster).")
    threads: int = Field(ge=1, description="Threads both ran on.")
    rounds: int = Field(ge=1)

    @property
    def faster(self) -> bool:
        return self.ratio < 1.0

    def line(self) -> str:
        verdict = "faster than" if self.faster else "NOT faster than"
        return (
            f"artifact {self.artifact_ms:.3f} ms vs {self.baseline} {self.baseline_ms:.3f} ms "
            f"({self.ratio:.2f}×): {verdict} {self.baseline}"
        )


def validate_baseline(baseline: object, target) -> None:
    """Refuse, before any work, a baseline that is unknown or that cannot be timed against
    ``target`` (a :class:`~graphopt.compiler.targets.ResolvedTarget`) on this host."""
    from graphopt.errors import CompileError

    if baseline is None:
        return
    if baseline not in BASELINES:
        raise CompileError(f"baseline must be one of {', '.join(BASELINES)} or None: {baseline!r}")
    if target.device != "cpu" or not target.can_measure_locally:
        raise CompileError(
            f"baseline {baseline!r} times CPU artifacts this host runs, not {target.name}"
        )


def check_baseline(artifact, baseline: Baseline, inputs, rounds: int = ROUNDS) -> BaselineCheck:
    """Time ``artifact`` against ``baseline`` on ``inputs`` (see the module); warns when the
    artifact is not faster."""
    check = measure(artifact, baseline, inputs, rounds)
    if not check.faster:
        warnings.warn(
            f"the compiled artifact is not faster than {baseline}: {check.line()}",
            SlowerThanBaselineWarning,
            stacklevel=3,
        )
    return check


def measure(artifact, baseline: Baseline, inputs, rounds: int = ROUNDS) -> BaselineCheck:
    """The side-by-side timing itself (no warning)."""
    import torch

    threads = artifact.threads or _default_threads()
    arrays = [x.numpy() for x in inputs]
    names = [spec.name for spec in artifact.manifest.inputs]
    run_baseline = runner(
        baseline, artifact.directory, dict(zip(names, inputs, strict=True)), threads
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            timings = time_interleaved(
                {"artifact": lambda: artifact(*arrays), baseline: run_baseline},
                rounds=rounds,
                burst=3,
                discard=0,
                warmup=10,
                warm_s=WARM_S,
            )
    finally:
        torch.set_num_threads(previous)
    mine, theirs = timings["artifact"].median_ms, timings[baseline].median_ms
    return BaselineCheck(
        baseline=baseline,
        artifact_ms=mine,
        baseline_ms=theirs,
        ratio=mine / theirs if theirs > 0 else float("inf"),
        threads=threads,
        rounds=rounds,
    )


def runner(baseline: Baseline, directory: Path, inputs: dict, threads: int) -> Callable[[], object]:
    """A no-argument call of ``baseline`` on ``inputs`` (by the manifest's input names, in
    order), from the artifact's portable files."""
    from graphopt.errors import CompileError

    directory = Path(directory)
    if baseline == "eager":
        import torch

        module = torch.export.load(str(directory / "model.pt2")).module()
        args = list(inputs.values())
        return lambda: module(*args)
    if not (directory / "model.onnx").exists():
        raise CompileError(
            f"baseline 'onnxruntime' needs the artifact's model.onnx, which the ONNX export "
            f"could not write (see the manifest's notes in {directory})"
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feed = {spec.name: inputs[spec.name].numpy() for spec in session.get_inputs()}
    return lambda: session.run(None, feed)


def _default_threads() -> int:
    from graphopt.compiler.threads import default_threads

    return default_threads()
