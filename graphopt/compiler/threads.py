"""TVM's CPU thread pool, sized to the host's physical cores instead of TVM's guess.

Unless ``TVM_NUM_THREADS`` is set, TVM 0.27 sizes its worker pool at half the logical CPUs on
x86 (it assumes two hyper-threads per core). On a host without hyper-threading, such as most
cloud VMs and this 2-core machine, a compiled model then runs on half the cores while ONNX
Runtime and PyTorch use all of them. graphopt sizes the pool explicitly: an artifact runs on the
host's physical cores (or ``TVM_NUM_THREADS`` when the user set it), and tuning measures its
candidates on the cores the target says it has, so schedules are chosen for the threads they
will run on.

The pool belongs to the process: the last size set holds for every artifact in it. TVM fixes
the pool's largest size when the pool is created, so importing graphopt reserves every CPU
(``TVM_NUM_THREADS`` = logical CPUs unless the user set it) and each artifact then asks for the
threads it wants.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from graphopt.compiler.targets import physical_cores

ENV = "TVM_NUM_THREADS"
USER_CHOICE = os.environ.get(ENV)  # the user's setting, read before graphopt sets its own

# TVM fixes its pool's maximum from ENV when the pool is first created (the first parallel
# kernel); later requests can only shrink it. Reserve every CPU now, size the pool on use.
os.environ.setdefault(ENV, str(os.cpu_count() or 1))


def default_threads() -> int:
    """``TVM_NUM_THREADS`` as the user set it, else this host's physical cores."""
    value = USER_CHOICE or ""
    return int(value) if value.isdigit() and int(value) > 0 else physical_cores()


def use_threads(threads: int) -> int:
    """Size this process's TVM worker pool to ``threads``; returns the size it got (less when
    TVM's pool was created before graphopt was imported, with a smaller maximum)."""
    import tvm_ffi

    tvm_ffi.get_global_func("runtime.config_threadpool")(_ALL_CORES, threads)
    return pool_threads()


def pool_threads() -> int:
    """Workers in this process's TVM pool now."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


@contextlib.contextmanager
def threads_for_children(threads: int) -> Iterator[None]:
    """``TVM_NUM_THREADS`` set for processes started inside the block (tuning's measurement
    workers), restored afterwards; this process's own pool is left alone."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous


_ALL_CORES = 1  # TVM's ThreadGroup mode kBig: on a homogeneous CPU, every core
