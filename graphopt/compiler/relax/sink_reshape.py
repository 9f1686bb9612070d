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
    from graphopt.compiler.relax.calls import rewrite_calls

    def rewrite(builder, call):
        if call.op.name == "relax.reshape":
            return _collapsed(builder, call)
        return _sunk(builder, call)

    return rewrite_calls("graphopt.SinkReshapes", ("relax.reshape", *UNARY, *BINARY), rewrite)


def _reshaped(builder, expr):
    """``a`` when ``expr`` is a variable bound to ``reshape(a, …)``; else None."""
    from tvm import relax

    if not isinstance(expr, relax.Var):
        return None
    value = builder.lookup_binding(expr)
    if not isinstance(value, relax.Call) or getattr(value.op, "name", None) != "relax.reshape":
        return None
    return value.args[0]


def _flattening(builder, expr):
    """``a`` when ``expr`` is bound to ``reshape(a, N×H×W×C)`` with ``a`` of shape
    ``N×1×HW×C``; else None."""
    source = _reshaped(builder, expr)
    flat, full = _shape(source), _shape(expr)
    if flat is None or full is None or len(flat) != 4 or len(full) != 4:
        return None
    n, one, pixels, c = flat
    if one != 1 or (n, c) != (full[0], full[3]) or pixels != full[1] * full[2]:
        return None
    return source


def _sunk(builder, call):
    """``reshape(f(a, z'), shape)`` for the element-wise ``call`` ``f(reshape(a), z)``, or None
    where no argument is a flattening or another argument broadcasts over the pixels."""
    from tvm import relax

    full = _shape(call)
    flats = [_flattening(builder, arg) for arg in call.args]
    source = next((a for a in flats if a is not None), None)
    if source is None or full is None:
        return None
    flat = _shape(source)
    args = []
    for arg, a in zip(call.args, flats, strict=True):
        if a is not None:
            args.append(a)
        elif _shape(arg) == full:
            args.append(builder.emit(relax.op.reshape(arg, flat)))
        elif _per_channel(arg, full):
            args.append(arg)
        else:
            return None
    inner = builder.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
    return relax.op.reshape(inner, full)


def _per_channel(expr, full) -> bool:
    """Whether ``expr`` broadcasts along everything but the channels (a bias, a scalar)."""
    shape = _shape(expr)
    if shape is None or len(shape) > len(full):
        return False
    return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, full[-1]))


def _collapsed(builder, call):
    """``reshape(a, s)`` for ``reshape(reshape(a, t), s)``; ``a`` itself when ``s`` is its
    shape."""
    from tvm import relax

    source = _reshaped(builder, call.args[0])
    if source is None:
        return None
    if _shape(source) is not None and _shape(source) == _shape(call):
        return source
    return relax.op.reshape(source, call.args[1])


def _shape(expr) -> tuple[int, ...] | None:
    """The static shape of ``expr`` (None when it has none or a symbolic dimension)."""
    try:
        return tuple(int(d) for d in expr.ty.shape)
    except (AttributeError, TypeError):
        return None
