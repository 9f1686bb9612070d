"""Convolutions widened to whole register tiles: ``Conv → W columns`` becomes ``Conv → W'
columns → crop``, with ``W'`` the width whose divisors give a full tile.

A convolution's register tile holds ``rows`` consecutive output columns, and ``rows`` must
divide the output width (TVM 0.27 puts a predicate on every multiply-add of a split with a
remainder). A prime width (AlexNet's 13 and 27, Inception-v3's 17 and 35, SqueezeNet's 13)
left one row per tile: every weight vector loaded for one multiply-add (38-45 % of the GEMM
peak on AlexNet's 13×13 layers, ONNX Runtime's same layers 2× faster). Matmuls are padded
inside their kernel (:mod:`graphopt.compiler.tir.schedules.padding`); a convolution is not an
einsum that ``pad_einsum`` takes, so it is widened here, on the channels-last Relax module: its
right padding grows by ``(W' − W)·stride`` (the extra columns read zeros and are never used),
and a ``strided_slice`` keeps the first ``W`` columns. ``FuseOps`` fuses the slice and the
epilogue after it (bias, activation, residual add) into the convolution's kernel, where the
tile's write-back folds into the crop (:func:`.schedules.loops.inline_epilogue`): the extra
columns are computed in registers and never stored.

:func:`wider` decides with the tile model of the default schedules (:func:`.tiles.shape_score`
times the share of useful columns), widening only where it gains :data:`MIN_GAIN`.
"""

from __future__ import annotations

from graphopt.compiler.tir.schedules.padding import MIN_GAIN

MAX_EXTRA = 0.25  # at most this share of extra columns


def wider(width: int, out_channels: int, lanes: int, budget: int) -> int:
    """The output width to compute for a convolution ``width`` wide (``width`` itself when no
    wider one gains :data:`MIN_GAIN` by the tile model)."""
    from graphopt.compiler.tir.schedules.tiles import register_shapes, shape_score, vector_lanes

    vector = vector_lanes(out_channels, lanes)
    groups_max = out_channels // vector

    def score(w: int) -> float:
        g, r = register_shapes(groups_max, w, budget)[0]
        return shape_score(g, r) * width / w

    best, choice = MIN_GAIN * score(width), width
    for w in range(width + 1, width + max(1, int(width * MAX_EXTRA)) + 1):
        if score(w) > best:
            best, choice = score(w), w
    return choice


def wide_rows(lanes: int, budget: int):
    """The Relax module pass widening every channels-last convolution :func:`wider` picks
    (run after ``channels_last``)."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    @relax.expr_functor.mutator
    class Widen(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(conv2d):
                return call
            width = _widened(call, lanes, budget)
            return call if width is None else _cropped(self.builder_, call, width)

    @tvm.ir.transform.module_pass(opt_level=0, name="graphopt.WideRows")
    def rewrite(mod, _ctx):
        mutator = Widen(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        return mutator.builder_.get()

    return rewrite


def _widened(call, lanes: int, budget: int) -> int | None:
    """The wider output width for the NHWC convolution ``call``, or None."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.out_layout) != ("NHWC", "NHWC") or not hasattr(call.ty, "shape"):
        return None
    try:
        n, h, w, c = (int(d) for d in call.ty.shape)
    except TypeError:  # a symbolic dimension
        return None
    width = wider(w, c // int(attrs.groups) if int(attrs.groups) > 1 else c, lanes, budget)
    return width if width > w else None


def _cropped(builder, call, width: int):
    """``strided_slice(conv(x, padding right + extra·stride), columns [0, W))``."""
    from tvm import relax

    attrs = call.attrs
    w = int(call.ty.shape[2])
    top, left, bottom, right = (int(p) for p in attrs.padding)
    right += (width - w) * int(attrs.strides[1])
    wide = builder.emit(
        relax.op.nn.conv2d(
            *call.args,
            strides=[int(s) for s in attrs.strides],
            padding=[top, left, bottom, right],
            dilation=[int(d) for d in attrs.dilation],
            groups=int(attrs.groups),
            data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype,
        )
    )
    return relax.op.strided_slice(wide, axes=[2], begin=[0], end=[w])
