"""``compile``: GraphModule → torch.export → Relax → (MetaSchedule) → shared library artifact.

The FX frontend of TVM 0.27 (``from_fx``) compiles BatchNorm in training mode and gives wrong
outputs, so the route is ``torch.export`` → ``from_exported_program`` (weights bound as
constants). See docs/explanation/compile.md.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from graphopt.compiler.artifact import Artifact, staging_dir
from graphopt.compiler.index_bounds import index_ranges
from graphopt.compiler.manifest import (
    LIBRARY,
    MANIFEST,
    Manifest,
    TargetInfo,
    TensorSpec,
    Versions,
    file_entries,
)
from graphopt.compiler.measure.baseline import Baseline, check_baseline, validate_baseline
from graphopt.compiler.relax.fast_math import fast_math_legalizations
from graphopt.compiler.relax.fold import fold_batch_norm
from graphopt.compiler.relax.layout import channels_last
from graphopt.compiler.relax.nan_semantics import nan_propagating_legalizations
from graphopt.compiler.relax.sink_reshape import sink_reshapes
from graphopt.compiler.relax.wide_rows import wide_rows
from graphopt.compiler.relax.winograd import winograd_convolutions
from graphopt.compiler.targets import ResolvedTarget, resolve_target
from graphopt.compiler.tir.lowering import compile_module
from graphopt.compiler.tir.schedules.tiles import lanes, registers
from graphopt.compiler.tune.tuning import Tuning, tune_and_apply
from graphopt.errors import CompileError
from graphopt.frontend.fx import ExampleInputs, as_input_tuple
from graphopt.report import OptimizeReport
from graphopt.version import __version__

DEFAULT_TUNING = Tuning()


def compile(  # noqa: A001 - the public name users expect (graphopt.compile)
    model: nn.Module,
    example_inputs: ExampleInputs,
    target: str | dict = "llvm",
    tuning: Tuning | None = DEFAULT_TUNING,
    *,
    report: OptimizeReport | None = None,
    winograd: bool = True,
    baseline: Baseline | None = None,
) -> Artifact:
    """Compile ``model`` for ``target`` into an :class:`Artifact` (``model`` is not changed).

    ``tuning=None`` compiles without tuning and without reading the tuning cache;
    ``Tuning(trials=0)`` tunes nothing new but applies what the cache already knows. On CPU
    targets every kernel without a tuned record runs graphopt's default schedule
    (:mod:`graphopt.compiler.tir.schedules`). ``winograd=False`` keeps every convolution direct
    (Winograd's float32 results differ from direct ones by about 1e-6 of the output's scale).
    ``baseline="onnxruntime"`` or ``"eager"`` times the artifact against that runtime on the
    example inputs, stores both figures in the manifest (``baseline``) and warns
    (:class:`~graphopt.compiler.measure.baseline.SlowerThanBaselineWarning`) when it is not faster.
    """
    start = time.perf_counter()
    resolved = resolve_target(target)
    validate_baseline(baseline, resolved)
    inputs = as_input_tuple(example_inputs)
    module = copy.deepcopy(model).eval()
    program = export_program(module, inputs)
    mod, summary = lower_program(program, resolved, tuning, winograd=winograd)
    staging = staging_dir()
    directory = Path(staging.name)
    _build(mod, resolved, directory / LIBRARY)
    notes = _write_portable(module, program, inputs, directory)
    manifest = _manifest(module, program, inputs, resolved, summary, report, notes, directory)
    manifest.compile_seconds = time.perf_counter() - start
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    artifact = Artifact(directory, manifest, _keep=staging)
    if baseline is not None:
        manifest.baseline = check_baseline(artifact, baseline, inputs)
        (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return artifact


def export_program(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
    try:
        with torch.no_grad():
            return torch.export.export(module, inputs)
    except Exception as exc:  # torch.export raises many error types
        raise CompileError(
            f"torch.export could not capture the model for compilation: {exc}".strip()
        ) from exc


def lower_program(
    program,
    target: ResolvedTarget,
    tuning: Tuning | None,
    defaults: bool = True,
    winograd: bool = True,
):
    """Relax module with schedules applied: tuned (and cached) ones, else graphopt's defaults
    (``defaults=False``: TVM's, i.e. none on CPU). On CPU, convolutions run channels-last
    (:mod:`graphopt.compiler.relax.layout`), 3×3 ones as Winograd GEMMs where that is less work
    (:mod:`graphopt.compiler.relax.winograd`)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    try:
        mod = from_exported_program(program, keep_params_as_input=False)
    except Exception as exc:  # an op TVM's frontend does not know
        raise CompileError(f"TVM's torch.export frontend failed: {exc}") from exc
    mod = fold_batch_norm(mod)
    if target.device == "cuda" and (tuning is None or not _gpu_tunable(target, tuning)):
        return mod, None  # tvm.compile's CUDA pipeline schedules with dlight
    if target.device == "cpu":
        mod = channels_last(mod)
        if winograd:
            mod = winograd_convolutions()(mod)
        mod = wide_rows(lanes(target.tvm()), registers(target.tvm()))(mod)
        mod = sink_reshapes()(mod)
    prefix = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(  # one pass: LegalizeOps legalizes every op it meets
            {**nan_propagating_legalizations(), **fast_math_legalizations()}
        ),
        relax.get_pipeline("zero"),
    ]
    with target.tvm():
        mod = tvm.transform.Sequential(prefix)(mod)
    summary = None
    if tuning is not None:
        mod, summary = tune_and_apply(mod, target, tuning)
    if defaults and target.device == "cpu":
        mod = with_default_schedules(mod, target)
    return mod, summary


def with_default_schedules(mod, target: ResolvedTarget):
    """graphopt's CPU schedules for every kernel the tuning cache did not schedule; constant
    weights they read in a packed layout are repacked once, here, at compile time."""
    import tvm
    from tvm import relax

    from graphopt.compiler.tir.schedules import default_schedules

    passes = [
        relax.transform.AttachAttrLayoutFreeBuffers(),
        default_schedules(),
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),  # the repacking kernels, now folded away
    ]
    with target.tvm():
        return tvm.transform.Sequential(passes)(mod)


def _gpu_tunable(target: ResolvedTarget, tuning: Tuning) -> bool:
    return tuning.rpc is not None or target.can_measure_locally


def _build(mod, target: ResolvedTarget, path: Path) -> None:
    try:
        executable = compile_module(mod, target.tvm())
        if target.cross_compiler:
            from tvm.support import cc

            fcompile = cc.cross_compiler(target.cross_compiler)
            executable.export_library(str(path), fcompile=fcompile)
        else:
            executable.export_library(str(path))
    except Exception as exc:  # TVM codegen / linker errors
        raise CompileError(f"TVM could not build for {target.name}: {exc}") from exc


def _write_portable(module, program, inputs, directory: Path) -> list[str]:
    """``model.pt2`` (torch.export) and ``model.onnx``; a failed export is noted, not fatal.
    The ONNX export runs with the attention fast path off: in eval mode without gradients an
    ``nn.MultiheadAttention`` (ViT, any ``nn.Transformer``) otherwise calls PyTorch's fused
    ``aten::_native_multi_head_attention``, which the exporter has no symbolic for."""
    notes = []
    torch.export.save(program, str(directory / "model.pt2"))
    try:
        with warnings.catch_warnings(), torch.no_grad(), _attention_fast_path_off():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                inputs,
                str(directory / "model.onnx"),
                dynamo=False,
                input_names=[s.name for s in _input_specs(program, inputs)],
            )
    except Exception as exc:  # the exporter's many error types
        (directory / "model.onnx").unlink(missing_ok=True)
        notes.append(f"model.onnx not written: torch.onnx.export failed: {exc}")
    return notes


@contextlib.contextmanager
def _attention_fast_path_off():
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _input_specs(program, inputs) -> list[TensorSpec]:
    names = list(program.graph_signature.user_inputs)
    ranges = index_ranges(program)
    return [
        _spec(name, x).model_copy(update={"index_range": ranges.get(name)})
        for name, x in zip(names, inputs, strict=True)
    ]


def _spec(name: str, x: torch.Tensor) -> TensorSpec:
    return TensorSpec(name=name, shape=list(x.shape), dtype=str(x.dtype).removeprefix("torch."))


def _manifest(module, program, inputs, target, summary, report, notes, directory) -> Manifest:
    import tvm

    with torch.no_grad():
        out = module(*inputs)
    single = isinstance(out, torch.Tensor)
    leaves = [out] if single else list(torch.utils._pytree.tree_leaves(out))
    return Manifest(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        versions=Versions(graphopt=__version__, tvm=tvm.__version__, torch=torch.__version__),
        target=TargetInfo(
            name=target.name, spec=target.spec, device=target.device, arch=target.arch
        ),
        inputs=_input_specs(program, inputs),
        outputs=[_spec(f"output{i}", y) for i, y in enumerate(leaves)],
        output_structure="single" if single else "tuple",
        passes=[p.name for p in report.passes] if report else [],
        report=report,
        tuning=summary,
        compile_seconds=0.0,
        files=file_entries(directory),
        notes=notes,
    )
