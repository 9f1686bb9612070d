"""Element-wise ops moved inside a pixel flattening: ``f(reshape(a, N×H×W×C), z) →
reshape(f(a, z'), N×H×W×C)`` for ``a`` of shape ``N×1×HW×C``.

A pointwise convolution computed over its pixels as one row
(:func:`graphopt.compiler.relax.wide_rows.flattened`) ends in a reshape back to ``N×H×W×C``.
``FuseOps`` fuses element-wise consumers into a convolution's kernel but not a reshape (it is
injective, not element-wise), so the bias, residual add and activation after it would run as a
kernel of their own, one more pass over the output. Moved before the reshape they fuse into the
convolution's write-back again; the reshapes left (the result's, a residual operand's) are
views (``RewriteDataflowReshape``), and a reshape of a reshape is one reshape.
"""

from __future__ import annotations

UNARY = (
    "relax.nn.relu",
    "relax.nn.silu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.sigmoid",
    "relax.tanh",
    "relax.exp",
    "relax.negative",
    "relax.clip",
)
BINARY = (
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
)


def sink_reshapes():
    """The Relax module pass moving element-wise ops inside pixel flattenings."""
    import tvm
    from tvm import relax

    reshape_op = tvm.ir.Op.get("relax.reshape")

    @relax.expr_functor.mutator
    class Sink(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            new = None
            if getattr(call.op, "name", None) in UNARY + BINARY:
                new = _sunk(self, call, reshape_op)
            elif call.op.same_as(reshape_op):
                new = _collapsed(self, call, reshape_op)
            return call if new is None else new

    @tvm.ir.transform.module_pass(opt_level=0, name="graphopt.SinkReshapes")
    def run(mod, _ctx):
        mutator = Sink(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        return mutator.builder_.get()

    return run


def _flattening(mutator, expr, reshape_op):
    """``a`` when ``expr`` is bound to ``reshape(a, N×H×W×C)`` with ``a`` of shape
    ``N×1×HW×C``; else None."""
    from tvm import relax

    if not isinstance(expr, relax.Var):
        return None
    value = mutator.lookup_binding(expr)
    if not isinstance(value, relax.Call) or not value.op.same_as(reshape_op):
        return None
    flat, full = _shape(value.args[0]), _shape(expr)
    if flat is None or full is None or len(flat) != 4 or len(full) != 4:
        return None
    n, one, pixels, c = flat
    if one != 1 or (n, c) != (full[0], full[3]) or pixels != full[1] * full[2]:
        return None
    return value.args[0]


def _sunk(mutator, call, reshape_op):
    """``reshape(f(a, z'), shape)`` for the element-wise ``call`` ``f(reshape(a), z)``, or None
    where no argument is a flattening or another argument broadcasts over the pixels."""
    from tvm import relax

    full = _shape(call)
    flats = [_flattening(mutator, arg, reshape_op) for arg in call.args]
    source = next((a for a in flats if a is not None), None)
    if source is None or full is None:
        return None
    flat = _shape(source)
    args = []
    for arg, a in zip(call.args, flats, strict=True):
        if a is not None:
            args.append(a)
        elif _shape(arg) == full:
            args.append(mutator.builder_.emit(relax.op.reshape(arg, flat)))
        elif _per_channel(arg, full):
            args.append(arg)
        else:
            return None
    inner = mutator.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
    return relax.op.reshape(inner, full)


def _per_channel(expr, full) -> bool:
    """Whether ``expr`` broadcasts along everything but the channels (a bias, a scalar)."""
    shape = _shape(expr)
    if shape is None or len(shape) > len(full):
        return False
    return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, full[-1]))


def _collapsed(mutator, call, reshape_op):
    """``reshape(a, s)`` for ``reshape(reshape(a, t), s)``; ``a`` itself when ``s`` is its
    shape."""
    from tvm import relax

    inner = call.args[0]
    if not isinstance(inner, relax.Var):
        return None
    value = mutator.lookup_binding(inner)
    if not isinstance(value, relax.Call) or not value.op.same_as(reshape_op):
        return None
    source = value.args[0]
    if _shape(source) is not None and _shape(source) == _shape(call):
        return source
    return relax.op.reshape(source, call.args[1])


def _shape(expr) -> tuple[int, ...] | None:
    """The static shape of ``expr`` (None when it has none or a symbolic dimension)."""
    try:
        return tuple(int(d) for d in expr.ty.shape)
    except (AttributeError, TypeError):
        return None
