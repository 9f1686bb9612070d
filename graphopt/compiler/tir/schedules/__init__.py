"""Default CPU schedules: what a kernel runs when the tuning cache has no record for it.

TVM 0.27 ships no CPU schedule for convolution or matrix products: an untuned kernel is a
serial, scalar loop nest (58× slower than PyTorch on ResNet-18). These rules give every fused
kernel a fixed loop nest chosen from its shapes, in the spirit of the micro-kernels of oneDNN
and MLAS:

* a *reduction* kernel (convolution of any kind, dense, matmul, pooling, mean) keeps a tile of
  outputs in vector registers while its reduction runs around it (:mod:`.tiles` says which
  loops and how weights and the padded input are laid out; weights are repacked once, at
  compile time); its padding runs as its own parallel vectorised loop (a depthwise kernel pads
  each tile's window instead) and its element-wise epilogue (bias, BatchNorm, ReLU/ReLU6,
  residual add) is applied to the tile as it is written;
* an *injective* kernel (element-wise, reshape, transpose, padding) is inlined into one loop
  nest, vectorised along its innermost loop and spread over the cores.

They are ``dlight`` rules: :func:`default_schedules` is the module pass ``compile`` runs after
the tuning cache's records, so tuned kernels keep their schedule. A kernel it schedules carries
the attribute :data:`SCHEDULE_ATTR` (the rule's name), so reports can tell the two apart.
"""

from __future__ import annotations

SCHEDULE_ATTR = "graphopt.default_schedule"
SCHEDULED = "tirx.is_scheduled"
LAYOUT_FREE = "layout_free_buffers"
TILE_ATTR = "graphopt.tile"  # the register tile, described for reports (see rules.describe)


def tile_description(func) -> str:
    """The description a rule annotated the kernel's root block with ("" when none)."""
    block = getattr(func.body, "block", None)
    return str((getattr(block, "annotations", None) or {}).get(TILE_ATTR, ""))


def vector_lanes_for(target: str | dict = "llvm") -> int:
    """float32 lanes of ``target``'s vectors (16 with AVX-512, 8 with AVX2, 4 with NEON): the
    ``round_to`` that keeps pruned channels and low-rank ranks filling whole vectors."""
    from graphopt.compiler.targets import resolve_target
    from graphopt.compiler.tir.schedules.tiles import lanes

    return lanes(resolve_target(target).tvm())


def _rules(variant: int = 0):
    """The rules, in the order they are tried (only reduction kernels have variants)."""
    from graphopt.compiler.tir.schedules.rules import InjectiveRule, ReductionRule, RowReductionRule

    if variant:
        return (ReductionRule(variant),)
    return ReductionRule(), RowReductionRule(), InjectiveRule()


def schedule_kernel(func, target, constants: set[int] = frozenset(), variant: int = 0):
    """``(schedule, rule name)`` of one PrimFunc, or None when no rule applies. ``constants``:
    indices of the parameters every caller passes a constant for (weights), which the schedule
    may read repacked. ``variant`` > 0: an alternative tile of a reduction kernel, for tuning
    to measure (None when the kernel has fewer)."""
    from graphopt.compiler.tir.schedules import winograd_transforms
    from graphopt.compiler.tir.schedules.tiles import lanes

    if constants:
        func = func.with_attr(LAYOUT_FREE, sorted(constants))
    which = winograd_transforms.kind(func) if target.kind.name == "llvm" else None
    if which is not None:  # one tile, no variants
        sch = winograd_transforms.schedule(func, which, lanes(target)) if variant == 0 else None
        return None if sch is None else (sch, "WinogradRule")
    for rule in _rules(variant):
        sch = rule.apply(func, target, False)
        if sch is not None:
            return sch, type(rule).__name__
    return None


def call_sites(mod):
    """``(kernel name, arguments)`` of every ``call_tir`` binding in ``main``."""
    for _, name, args in bound_calls(mod):
        yield name, args


def bound_calls(mod):
    """``(bound variable, kernel name, arguments)`` of every ``call_tir`` binding in ``main``."""
    from tvm import relax

    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", None) == _CALL_TIR:
                args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else []
                yield binding.var, value.args[0].name_hint, args


_CALL_TIR = "relax.call_tir"


def constant_params(mod) -> dict[str, set[int]]:
    """Per kernel name: the parameters ``main`` passes a constant at every call."""
    from tvm import ir

    found: dict[str, set[int]] = {}
    for name, args in call_sites(mod):
        here = {i for i, a in enumerate(args) if isinstance(a, ir.expr.Constant)}
        found[name] = found[name] & here if name in found else here
    return found


def default_schedules():
    """The module pass scheduling every PrimFunc not scheduled yet (LLVM targets only); run it
    after ``AttachAttrLayoutFreeBuffers`` so that weights may be read repacked."""
    import tvm
    from tvm import tirx

    def transform(mod, _context):
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and SCHEDULED in func.attrs):
                continue
            scheduled = schedule_kernel(func, target)
            if scheduled is not None:
                sch, rule = scheduled
                attrs = {
                    SCHEDULED: True,
                    SCHEDULE_ATTR: rule,
                    TILE_ATTR: tile_description(sch.mod["main"]),
                }
                updates[gv] = sch.mod["main"].with_attrs(attrs)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return tvm.ir.transform.module_pass(transform, opt_level=0, name="GraphoptDefaultSchedules")
