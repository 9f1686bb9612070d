"""Kernel report: each fused kernel's share of run time and its GFLOP/s against the machine's peak.

The model is lowered exactly as :func:`graphopt.compile` lowers it (the tuning cache's schedules
where it has them, graphopt's default schedules elsewhere, weights repacked at compile time) and
every fused kernel the model calls is built on its own and timed on random inputs, with how
often the model calls it. FLOPs come from TVM's TIR estimate. The peak is a large single-precision GEMM through
PyTorch (oneDNN/MKL) on the same threads as the kernels (the target's cores): what this machine
can do, not a datasheet number.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from graphopt.compiler.targets import resolve_target
from graphopt.compiler.threads import default_threads, pool_threads, use_threads
from graphopt.compiler.tir.schedules import (
    SCHEDULE_ATTR,
    SCHEDULED,
    TILE_ATTR,
    bound_calls,
    call_sites,
)
from graphopt.compiler.tune.tuning import Tuning
from graphopt.errors import CompileError
from graphopt.frontend.fx import ExampleInputs, as_input_tuple


class Kernel(BaseModel):
    """One fused kernel (a tuning task)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="TVM's name for the fused kernel, e.g. fused_conv2d_add_relu.")
    calls: int = Field(ge=1, description="Times the model calls it.")
    ms: float = Field(ge=0, description="Median time of one call.")
    share: float = Field(ge=0, le=1, description="Fraction of the summed kernel time.")
    gflop: float = Field(ge=0, description="Floating-point work of one call (TIR estimate).")
    gflops: float = Field(ge=0, description="Achieved GFLOP/s.")
    peak_fraction: float = Field(ge=0, description="gflops / the measured peak.")
    tile: str = Field(
        default="",
        description="A default schedule's register tile; says when the layer's shape left "
        "vector lanes empty.",
    )
    winograd: bool = Field(
        default=False,
        description="One of the three kernels of a Winograd convolution (input transform, "
        "batched GEMM, output transform): its GFLOP/s count the multiplications it does, "
        "fewer than the direct convolution's.",
    )
    schedule: Literal["tuned", "default", "none"] = Field(
        description="The tuning cache's schedule, graphopt's default one, or none (TVM's "
        "serial loops: a kernel no rule could schedule)."
    )


class KernelReport(BaseModel):
    """Kernels sorted by their share of run time, with the peak they are measured against."""

    model_config = ConfigDict(extra="forbid")

    target: str
    peak_gflops: float = Field(description="Measured single-precision GEMM GFLOP/s.")
    total_ms: float = Field(description="Summed time of all kernel calls.")
    kernels: list[Kernel]

    def table(self) -> str:
        """A markdown table, largest share first."""
        lines = [
            f"Peak (PyTorch GEMM): {self.peak_gflops:.1f} GFLOP/s; kernels sum to "
            f"{self.total_ms:.3f} ms.",
            "",
            "| kernel | calls | ms/call | share | GFLOP/s | of peak | schedule | tile |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in self.kernels:
            lines.append(
                f"| {k.name} | {k.calls} | {k.ms:.4f} | {100 * k.share:.1f} % | {k.gflops:.1f} "
                f"| {100 * k.peak_fraction:.0f} % | {k.schedule} | {k.tile} |"
            )
        return "\n".join(lines)


def measure_gemm_peak(size: int = 2048, threads: int | None = None, repeats: int = 10) -> float:
    """GFLOP/s of a ``size``² single-precision matrix product through PyTorch (best of runs)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def kernel_report(
    model: nn.Module,
    example_inputs: ExampleInputs,
    target: str | dict = "llvm",
    tuning: Tuning | None = None,
    *,
    peak_gflops: float | None = None,
    repeats: int = 5,
) -> KernelReport:
    """Time every fused kernel of ``model`` as compiled for ``target`` (a CPU target).

    With ``tuning``, kernels the cache has a record for run their tuned schedule (nothing is
    tuned here); the others, and all of them without ``tuning``, graphopt's default schedules.
    """
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from graphopt.compiler.build import export_program, lower_program

    resolved = resolve_target(target)
    if resolved.device != "cpu" or not resolved.can_measure_locally:
        raise CompileError(
            f"the kernel report times kernels on this host's CPU; target {resolved.name} "
            "does not run here"
        )
    program = export_program(copy.deepcopy(model).eval(), as_input_tuple(example_inputs))
    apply_only = tuning.model_copy(update={"trials": 0}) if tuning is not None else None
    mod, _ = lower_program(program, resolved, apply_only)
    # as tvm.compile does: a reshape kernel that only copies becomes a view, not a call
    mod = tvm.relax.transform.RewriteDataflowReshape()(mod)
    threads = int(resolved.spec.get("num-cores") or default_threads())
    peak = peak_gflops or measure_gemm_peak(threads=threads)
    tvm_target = resolved.tvm()
    rows = []
    previous = pool_threads()
    use_threads(threads)  # the threads the peak was measured on and the artifact runs on
    try:
        winograd = _winograd_kernels(mod)
        for name, func, calls in _called_kernels(mod):
            kernel = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            seconds = _time_kernel(kernel, tvm_target, repeats)
            flop = float(estimate_tir_flops(kernel))
            tags = (_schedule(func), _tile(func), name in winograd)
            rows.append((name, calls, seconds, flop, *tags))
    finally:
        use_threads(previous)
    return _report(resolved.name, peak, rows)


def _called_kernels(mod):
    """(name, PrimFunc, calls) of every kernel ``main`` calls; a kernel whose weights were
    repacked keeps its task's name."""
    calls = Counter(name for name, _ in call_sites(mod))
    for name, count in calls.items():
        yield name.removesuffix(_PREPACKED), mod[name], count


_PREPACKED = "_prepacked"  # SplitLayoutRewritePreproc's suffix


def _winograd_kernels(mod) -> set[str]:
    """Names of the transforms of Winograd convolutions and of the GEMMs between them."""
    from graphopt.compiler.relax.winograd import INPUT_KERNEL, OUTPUT_KERNEL

    found, windows = set(), set()
    for var, name, args in bound_calls(mod):
        transform = name.startswith(INPUT_KERNEL) or OUTPUT_KERNEL in name
        if transform or any(arg in windows for arg in args):
            found.add(name.removesuffix(_PREPACKED))
        if name.startswith(INPUT_KERNEL):
            windows.add(var)
    return found


def _schedule(func) -> str:
    attrs = func.attrs or {}
    return "default" if SCHEDULE_ATTR in attrs else "tuned" if SCHEDULED in attrs else "none"


def _tile(func) -> str:
    return str((func.attrs or {}).get(TILE_ATTR, ""))


def _report(target: str, peak: float, rows) -> KernelReport:
    total = sum(row[1] * row[2] for row in rows)
    kernels = []
    for name, calls, seconds, flop, schedule, tile, winograd in rows:
        gflops = flop / seconds / 1e9 if seconds else 0.0
        kernels.append(
            Kernel(
                name=name,
                calls=calls,
                ms=seconds * 1e3,
                share=calls * seconds / total if total else 0.0,
                gflop=flop / 1e9,
                gflops=gflops,
                peak_fraction=gflops / peak,
                schedule=schedule,
                tile=tile,
                winograd=winograd,
            )
        )
    kernels.sort(key=lambda k: -k.share)
    return KernelReport(target=target, peak_gflops=peak, total_ms=total * 1e3, kernels=kernels)


def _time_kernel(func_mod, tvm_target, repeats: int) -> float:
    """Median seconds of one call of the module's ``main`` on random inputs."""
    import tvm
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.tir.lowering import compile_module

    runtime = compile_module(func_mod, tvm_target).jit()
    generator = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(_random(generator, [int(d) for d in info.shape], info.dtype))
        for info in ms.arg_info.ArgInfo.from_prim_func(func_mod["main"])
    ]
    timer = runtime.time_evaluator("main", tvm.cpu(), number=3, repeat=repeats, min_repeat_ms=20)
    return float(timer(*args).median)


def _random(generator, shape: list[int], dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        return generator.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)  # indices: zero is always in range
