"""CPU activations channels-last: convolutions in NHWC with OHWI weights.

In NHWC a depthwise convolution, the padding before it and a pooling layer all read channels
contiguously, so they vectorise along channels without the transposing copy an NCHW kernel
needs for that (measured with the default schedules, 2 threads: MobileNetV2 9.0 → 5.5 ms,
CIFAR ResNet-56 1.8 → 1.1 ms; ResNet-18 16.2 → 14.0 ms together with the tile's loop order).
TVM's ``ConvertLayout`` rewrites the convolutions and carries the layout through the
element-wise ops, pools and residual adds that follow; it transposes once at the input and
where an op keeps its own layout (the classifier's flatten).

``clip`` (what ``torch.export`` makes of ReLU6 and hardtanh) has no layout rule in TVM 0.27:
``ConvertLayout`` would wrap each one in two transposes and keep it out of the convolution's
fused epilogue. It is first rewritten as ``minimum(hi, maximum(lo, x))``, which has one (the
constants first, so that a NaN ``x`` stays NaN: :mod:`graphopt.compiler.relax.nan_semantics`).
"""

from __future__ import annotations

import warnings

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


def channels_last(mod):
    """``mod`` with its 2-D convolutions channels-last (unchanged when it has none). Where TVM's
    ``ConvertLayout`` fails (it aborts on some transformer graphs in 0.27), the model keeps
    NCHW, with a warning: slower kernels, same results."""
    import tvm
    from tvm import relax

    if not _has_conv2d(mod):
        return mod
    try:
        return tvm.transform.Sequential(
            [_clip_as_min_max(), relax.transform.ConvertLayout(DESIRED)]
        )(mod)
    except RuntimeError as exc:  # TVM reports C++ failures (InternalError, OpError) as these
        warnings.warn(
            f"convolutions stay NCHW: TVM's ConvertLayout failed ({exc}".strip() + ")",
            RuntimeWarning,
            stacklevel=3,
        )
        return mod


def _has_conv2d(mod) -> bool:
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    found = []

    def visit(expr):
        if isinstance(expr, tvm.ir.expr.Call) and expr.op.same_as(conv2d):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _clip_as_min_max():
    from graphopt.compiler.relax.calls import rewrite_calls

    return rewrite_calls("graphopt.ClipAsMinMax", "relax.clip", _min_max)


def _min_max(builder, call):
    from tvm import relax

    x, lo, hi = call.args
    dtype = str(x.ty.dtype.dtype)
    lower = relax.op.maximum(relax.const(_value(lo), dtype), x)  # constants first:
    upper = relax.const(_value(hi), dtype)  # NaN passes (see nan_semantics)
    return relax.op.minimum(upper, builder.emit(lower))


def _value(bound) -> float:
    """A clip bound: a PrimValue (``R.prim_value(6.0)``) or a float."""
    value = getattr(bound, "value", bound)
    return float(getattr(value, "value", value))
