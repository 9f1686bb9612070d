"""Default CPU schedules: what a kernel runs when the tuning cache has no record for it.

TVM 0.27 ships no CPU schedule for convolution or matrix products: an untuned kernel is a
serial, scalar loop nest (58× slower than PyTorch on ResNet-18). These rules give every fused
kernel a fixed loop nest chosen from its shapes, in the spirit of the micro-kernels of oneDNN
and MLAS:

* a *reduction* kernel (convolution of any kind, dense, matmul, pooling, mean) keeps a tile of
  outputs in vector registers while its reduction runs around it (:mod:`.tiles` says which
  loops and how weights and the padded input are laid out; weights are repacked once, at
  compile time); its padding runs as its own parallel vectorised loop and its element-wise
  epilogue (bias, BatchNorm, ReLU/ReLU6, residual add) is applied to the tile as it is written;
* an *injective* kernel (element-wise, reshape, transpose, padding) is inlined into one loop
  nest, vectorised along its innermost loop and spread over the cores.

They are ``dlight`` rules: :func:`default_schedules` is the module pass ``compile`` runs after
the tuning cache's records, so tuned kernels keep their schedule. A kernel it schedules carries
the attribute :data:`SCHEDULE_ATTR` (the rule's name), so reports can tell the two apart.
"""

from __future__ import annotations

SCHEDULE_ATTR = "graphopt.default_schedule"
SCHEDULED = "tirx.is_scheduled"


def default_schedules():
    """The module pass scheduling every PrimFunc not scheduled yet (LLVM targets only)."""
    import tvm
    from tvm import tirx

    from graphopt.compiler.schedules.rules import InjectiveRule, ReductionRule

    rules = (ReductionRule(), InjectiveRule())

    def transform(mod, _context):
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and SCHEDULED in func.attrs):
                continue
            for rule in rules:
                sch = rule.apply(func, target, False)
                if sch is not None:
                    attrs = {SCHEDULED: True, SCHEDULE_ATTR: type(rule).__name__}
                    updates[gv] = sch.mod["main"].with_attrs(attrs)
                    break
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return tvm.ir.transform.module_pass(transform, opt_level=0, name="GraphoptDefaultSchedules")
