"""Register only the CPU tensor intrinsics, skipping TVM's 27-second import of all of them.

MetaSchedule imports ``tvm.s_tir.tensor_intrin`` when it creates a tuning context and again in
every builder worker (whose pool restarts every search round). That package parses about 250
TVMScript functions for CUDA, ROCm, Hexagon, Metal, and each parse walks ``inspect.stack()``,
whose cost grows with ``len(sys.modules)``: with torch imported it takes 27 s here (more than
the tuning it precedes). CPU schedules only tensorize with the x86 and Arm intrinsics, so for
CPU targets we import those two modules under a stand-in package and leave the rest for
whoever needs them: the stand-in is removed afterwards, so a later plain
``import tvm.s_tir.tensor_intrin`` (e.g. for CUDA) registers the others as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types

PACKAGE = "tvm.s_tir.tensor_intrin"


@contextlib.contextmanager
def cpu_intrinsics_only():
    """Within the block, ``import tvm.s_tir.tensor_intrin`` registers only x86/Arm intrinsics."""
    if PACKAGE in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(PACKAGE)
    stand_in = types.ModuleType(PACKAGE)
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__package__ = PACKAGE
    sys.modules[PACKAGE] = stand_in
    try:
        for name in ("x86", "arm_cpu"):
            importlib.import_module(f"{PACKAGE}.{name}")
        yield
    finally:
        if sys.modules.get(PACKAGE) is stand_in:
            del sys.modules[PACKAGE]


def build_candidate(mod, target, params):
    """TVM's ``default_build`` for one candidate, with only the CPU intrinsics registered and
    graphopt's lowering pipeline (a candidate is measured as ``compile`` will build it)."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from graphopt.compiler.tir.lowering import pipeline_for

    with cpu_intrinsics_only():
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm.tirx.build(mod, target=target, pipeline=pipeline_for(target))
