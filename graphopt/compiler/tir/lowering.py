"""TIR → machine code: TVM's lowering pipeline, with a tile's buffers on the stack.

TVM's ``LowerTVMBuiltin`` leaves only "global" buffers under 1 KiB to the stack; every other
buffer is allocated by a call of ``TVMBackendAllocWorkspace`` where it is declared. Our default
schedules declare a tile's accumulator ("local") and a depthwise kernel's padded window inside
the tile loop: each tile paid two allocations and two frees, and LLVM had to keep the
accumulator in memory behind a pointer it could not see through. On the stack, LLVM promotes
both to registers (MobileNetV2's 144-channel depthwise convolution at 56×56: 0.133 → 0.072 ms).

:data:`PIPELINE` is TVM's default S-TIR pipeline with :func:`stack_buffers` run just before
``LowerTVMBuiltin`` (and, before it, :func:`.prefetch.insert_prefetches`, which places the
weight prefetches the default schedules of weight-streaming kernels ask for);
:func:`pipeline_for` names it for LLVM targets. Everything that builds kernels (``compile``,
tuning candidates, the kernel report) builds them through it, so a kernel is measured as it
will run.
"""

from __future__ import annotations

from functools import cache

from graphopt.compiler.tir.schedules.prefetch import insert_prefetches
from graphopt.compiler.tir.walk import children, with_children

PIPELINE = "graphopt"
# The largest buffer put on the stack. Worker threads get 8 MiB stacks on Linux (512 KiB on
# macOS); a tile's buffers are a few KiB, an L1 cache is 32-48 KiB.
STACK_LIMIT = 32 << 10
_KEEP = "disable_lower_builtin"  # TVM's kDisableLowerTVMBuiltin: LowerTVMBuiltin leaves it


def pipeline_for(tvm_target) -> str:
    """The TIR pipeline to build for ``tvm_target``: ours for LLVM (CPU) targets."""
    if tvm_target.kind.name != "llvm":
        return "default"
    _register()
    return PIPELINE


def compile_module(mod, tvm_target):
    """``tvm.compile`` with :func:`pipeline_for`'s pipeline."""
    import tvm

    return tvm.compile(mod, target=tvm_target, tir_pipeline=pipeline_for(tvm_target))


@cache
def _register() -> None:
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import register_tir_pipeline

    def factory():
        lower, finalize_host, finalize_device = default_s_tir_pipeline()

        def host():
            passes = [insert_prefetches(), stack_buffers(), finalize_host()]
            return tvm.transform.Sequential(passes)

        return lower, host, finalize_device

    register_tir_pipeline(PIPELINE, factory)


def stack_buffers(limit: int = STACK_LIMIT):
    """The PrimFunc pass marking every constant-size buffer of at most ``limit`` bytes to stay
    a stack allocation (LLVM places those in the function's entry block: one per call or per
    thread of a parallel loop, never one per iteration)."""
    import tvm

    def transform(func, _mod, _ctx):
        body = mark_small_allocations(func.body, limit)
        return func if body.same_as(func.body) else func.with_body(body)

    return tvm.tirx.transform.prim_func_pass(transform, opt_level=0, name="GraphoptStackBuffers")


def mark_small_allocations(stmt, limit: int):
    """``stmt`` with its small allocations marked; the same object when nothing changed."""
    from tvm import tirx

    if isinstance(stmt, tirx.AllocBuffer):
        size = buffer_bytes(stmt.buffer)
        if size is None or size > limit or _KEEP in stmt.annotations:
            return stmt
        return tirx.AllocBuffer(stmt.buffer, {**stmt.annotations, _KEEP: _true()}, stmt.span)
    return with_children(stmt, [mark_small_allocations(child, limit) for child in children(stmt)])


def buffer_bytes(buffer) -> int | None:
    """Bytes of a buffer of constant shape (None when a dimension is symbolic)."""
    from tvm import tirx

    size = (buffer.dtype.bits * buffer.dtype.lanes + 7) // 8
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            return None
        size *= int(dim.value)
    return size


def _true():
    from tvm import tirx

    return tirx.IntImm("int32", 1)
