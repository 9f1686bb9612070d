"""ReLU and clamps that let NaN through, as PyTorch's do, at no cost.

TVM lowers ``max(a, b)`` to ``select(a > b, a, b)`` and ``min(a, b)`` to ``select(a < b, a,
b)``: a comparison with NaN is false, so the *second* operand wins. TOPI writes ReLU as
``max(x, 0)`` and clip as ``max(min(x, hi), lo)``, so a NaN input came out of a compiled ReLU
as 0 and out of a ReLU6 as 6, where PyTorch returns NaN. With the constant first
(``max(0, x)``, ``min(hi, max(lo, x))``) a NaN ``x`` is the operand that wins, and the
instruction is the same (x86 ``maxps`` returns its second operand on NaN; LLVM picks it for
either order), so the schedules and the speed do not change. Infinities were already right.

A max pool reduces with ``acc = max(acc, x)``: a NaN ``x`` enters the accumulator, and the next
comparison drops it again. On LLVM targets its reduction here is LLVM's ``maximum``
(IEEE 754-2019: NaN if either operand is; x86 ``maxps`` plus a compare and blend, AArch64 one
``fmax``). Elsewhere it keeps a NaN accumulator with ``select(isnan(acc), acc, max(acc,
x))``, which costs an LLVM build its vectors: TVM's vectoriser runs a loop holding ``isnan``
one float at a time (a 3×3 pool over 109²×96 took 1.46 ms, 10× its vector time).

:func:`nan_propagating_legalizations` gives ``LegalizeOps`` entries for ``relax.nn.relu`` and
``relax.clip`` (which ``torch.export`` makes of ReLU6, hardtanh and clamp) written this way,
and for ``relax.nn.max_pool2d`` with the NaN-keeping reduction; ``compile`` legalizes with them
(and :mod:`.fast_math`'s) before the ``zero`` pipeline, whose own ``LegalizeOps`` then finds
nothing left.
"""

from __future__ import annotations


def nan_propagating_legalizations() -> dict:
    """``LegalizeOps`` entries for ReLU and clip with their constants first and for max
    pooling with the NaN-keeping reduction (see the module)."""
    return {
        "relax.nn.relu": _legalize_relu,
        "relax.clip": _legalize_clip,
        "relax.nn.max_pool2d": _legalize_max_pool2d,
    }


def _legalize_relu(bb, call):
    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


def _legalize_clip(bb, call):
    return bb.call_te(clip, *call.args, primfunc_name_hint="clip")


def relu(x):
    """``max(0, x)``: NaN stays NaN."""
    from tvm import te, tirx

    return te.compute(x.shape, lambda *i: te.max(tirx.const(0, x.dtype), x(*i)), tag="elemwise")


def clip(x, low, high):
    """``min(high, max(low, x))``: NaN stays NaN."""
    from tvm import te

    def value(*i):
        return te.min(_constant(high, x.dtype), te.max(_constant(low, x.dtype), x(*i)))

    return te.compute(x.shape, value, tag="elemwise")


def _constant(bound, dtype):
    import tvm
    from tvm import tirx

    if tvm.ir.is_prim_expr(bound):
        return tirx.Cast(dtype, bound)
    return tirx.const(bound, dtype)


def _legalize_max_pool2d(bb, call):
    attrs = call.attrs
    if attrs.out_layout != attrs.layout or attrs.layout not in ("NCHW", "NHWC"):
        return call  # TVM's legalization (or none) for what this one does not cover
    out_shape = [int(d) for d in call.ty.shape]
    window = {
        "out_shape": out_shape,
        "kernel": [int(k) for k in attrs.pool_size],
        "stride": [int(k) for k in attrs.strides],
        "dilation": [int(k) for k in attrs.dilation],
        "padding": [int(k) for k in attrs.padding],  # top, left, bottom, right
        "layout": str(attrs.layout),
    }
    return bb.call_te(max_pool2d, call.args[0], **window, primfunc_name_hint="max_pool2d")


def max_pool2d(x, out_shape, kernel, stride, dilation, padding, layout):
    """Max pool whose result is NaN when its window holds a NaN (PyTorch's semantics)."""
    from tvm import te, tirx, topi

    h, w = layout.index("H"), layout.index("W")
    before, after = [0] * 4, [0] * 4
    for axis, k, s, d, top in zip((h, w), kernel, stride, dilation, padding[:2], strict=True):
        reach = (out_shape[axis] - 1) * s + (k - 1) * d + 1  # the rows the windows read
        before[axis], after[axis] = top, max(reach - top - int(x.shape[axis]), 0)
    lowest = tirx.min_value(x.dtype)
    padded = topi.nn.pad(x, before, after, pad_value=lowest, name="pad_temp")
    rows, cols = te.reduce_axis((0, kernel[0]), "rv0"), te.reduce_axis((0, kernel[1]), "rv1")
    nan_max = te.comm_reducer(
        lambda acc, v: _keep_nan_max(acc, v, x.dtype), lambda t: tirx.min_value(t), name="nan_max"
    )

    def value(*i):
        at = list(i)
        at[h] = i[h] * stride[0] + rows * dilation[0]
        at[w] = i[w] * stride[1] + cols * dilation[1]
        return nan_max(padded(*at), axis=[rows, cols])

    return te.compute(out_shape, value, name="pool_max", tag="pool_max")


def _keep_nan_max(acc, x, dtype: str):
    import tvm
    from tvm import tirx

    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "llvm":
        return tirx.call_llvm_pure_intrin(dtype, "llvm.maximum", acc, x)
    return tirx.Select(tirx.isnan(acc), acc, tirx.max(acc, x))
