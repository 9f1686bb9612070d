"""How tuning candidates are built and measured: the builder, the runner (local or over an RPC
tracker), the evaluator's repeats and the threads a measurement runs on."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from graphopt.compiler.targets import ResolvedTarget
from graphopt.compiler.threads import threads_for_children
from graphopt.compiler.tir.intrinsics import cpu_intrinsics_only

if TYPE_CHECKING:
    from graphopt.compiler.tune.tuning import RPC


def measuring_threads(target: ResolvedTarget):
    """Candidates measured on this host run on the target's cores (the threads the artifact
    will use), not on TVM's default of half the logical CPUs."""
    cores = target.spec.get("num-cores")
    if target.device != "cpu" or not cores:
        return contextlib.nullcontext()
    return threads_for_children(int(cores))


def intrinsics_for(tvm_target):
    if tvm_target.kind.name == "llvm":
        return cpu_intrinsics_only()
    return contextlib.nullcontext()


def builder(tvm_target):
    import tvm.s_tir.meta_schedule as ms

    if tvm_target.kind.name != "llvm":
        return "local"
    from graphopt.compiler.tir.intrinsics import build_candidate

    return ms.builder.LocalBuilder(f_build=build_candidate)


def evaluator():
    """Each candidate timed 10 times from cold caches, as a kernel runs inside a network whose
    weights stream from memory. TVM's default (one sample of 3 warm calls) ranked schedules by
    their cache-hot speed: a MobileNetV2 tuned that way ran 6 % slower than its defaults."""
    import tvm.s_tir.meta_schedule as ms

    return ms.runner.EvaluatorConfig(
        number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True
    )


def local_runner():
    import tvm.s_tir.meta_schedule as ms

    return ms.runner.LocalRunner(evaluator_config=evaluator())


def runner(rpc: RPC | None):
    import tvm.s_tir.meta_schedule as ms

    if rpc is None:
        return local_runner()
    host, port = rpc.host_port
    config = ms.runner.RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=rpc.key,
        session_timeout_sec=rpc.session_timeout,
    )
    return ms.runner.RPCRunner(rpc_config=config)
