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
times the share of useful columns), widening only where it gains :data:`MIN_GAIN`. The same
model widens output channels to whole vectors (:func:`more_channels`) and runs a pointwise
convolution's pixels as one row (:func:`flattened`: ``reshape → conv over N × 1 × HW → reshape
back``, the epilogue kept inside by :mod:`.sink_reshape`).
"""

from __future__ import annotations

from graphopt.compiler.tir.schedules.padding import MIN_GAIN

MAX_EXTRA = 0.25  # at most this share of extra columns


def wider(width: int, out_channels: int, lanes: int, budget: int) -> int:
    """The output width to compute for a convolution ``width`` wide (``width`` itself when no
    wider one gains :data:`MIN_GAIN` by the tile model)."""
    return _widest(width, out_channels, lanes, budget)[0]


def _widest(width: int, out_channels: int, lanes: int, budget: int) -> tuple[int, float]:
    """(:func:`wider`'s width, its tile-model score counting only the useful columns)."""
    from graphopt.compiler.tir.schedules.tiles import register_shapes, shape_score, vector_lanes

    vector = vector_lanes(out_channels, lanes)
    groups_max = out_channels // vector

    def score(w: int) -> float:
        g, r = register_shapes(groups_max, w, budget)[0]
        return shape_score(g, r) * width / w

    best, choice = MIN_GAIN * score(width), width
    # a width further than ``budget`` columns out is never better: its best tile's rows (at
    # most ``budget``) divide a nearer one, which wastes fewer columns
    for w in range(width + 1, width + max(1, min(int(width * MAX_EXTRA), budget)) + 1):
        if score(w) > best:
            best, choice = score(w), w
    return choice, score(choice)


def flattened(height: int, width: int, out_channels: int, lanes: int, budget: int) -> bool:
    """Whether a pointwise convolution over ``height × width`` pixels tiles better with its
    pixels as one row of ``height · width`` (a 7 × 7 map: 7 columns left tiles of 1 × 7 or
    7 × 1; 49 pixels widened to 54 give 2 × 6) by :data:`MIN_GAIN` of the tile model."""
    if height == 1:
        return False
    rows = _widest(width, out_channels, lanes, budget)[1]
    return _widest(height * width, out_channels, lanes, budget)[1] >= MIN_GAIN * rows


def more_channels(width: int, out_channels: int, lanes: int, budget: int) -> int:
    """The output channels to compute for a dense convolution with ``out_channels`` (itself
    when the next multiple of ``lanes`` does not gain :data:`MIN_GAIN` by the tile model)."""
    from graphopt.compiler.tir.schedules.tiles import register_shapes, shape_score, vector_lanes

    def score(channels: int) -> float:
        vector = vector_lanes(channels, lanes)
        g, r = register_shapes(channels // vector, width, budget)[0]
        return vector / lanes * shape_score(g, r) * out_channels / channels

    padded = -(-out_channels // lanes) * lanes
    return padded if score(padded) >= MIN_GAIN * score(out_channels) else out_channels


def wide_rows(lanes: int, budget: int):
    """The Relax module pass widening every channels-last convolution :func:`wider` and
    :func:`more_channels` pick (run after ``channels_last``)."""
    from tvm import relax

    from graphopt.compiler.relax.calls import rewrite_calls

    def rewrite(builder, call):
        flat = _flat(builder, call, lanes, budget)
        width, channels = _widened(call if flat is None else flat, lanes, budget)
        if flat is None:
            if width is None and channels is None:
                return None
            return _cropped(builder, call, width, channels)
        if width is not None or channels is not None:
            flat = builder.emit(_cropped(builder, flat, width, channels))
        return relax.op.reshape(flat, call.ty.shape)

    return rewrite_calls("graphopt.WideRows", "relax.nn.conv2d", rewrite)


def _widened(call, lanes: int, budget: int) -> tuple[int | None, int | None]:
    """The wider output width and the output channels for the NHWC convolution ``call``
    (None for each that stays)."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.out_layout) != ("NHWC", "NHWC") or not hasattr(call.ty, "shape"):
        return None, None
    try:
        n, h, w, c = (int(d) for d in call.ty.shape)
    except TypeError:  # a symbolic dimension
        return None, None
    groups = int(attrs.groups)
    width = wider(w, c // groups if groups > 1 else c, lanes, budget)
    channels = c
    if groups == 1 and attrs.kernel_layout == "OHWI" and _constant(call.args[1]) is not None:
        channels = more_channels(width, c, lanes, budget)
    return (width if width > w else None), (channels if channels > c else None)


def _flat(builder, call, lanes: int, budget: int):
    """The pointwise NHWC convolution ``call`` over its pixels as one row, ``conv(reshape(x,
    N × 1 × HW × C))`` (normalised: its shape known), where :func:`flattened` picks it."""
    from tvm import relax

    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "OHWI", "NHWC"):
        return None
    try:
        n, h, w, c = (int(d) for d in call.ty.shape)
        k, kh, kw, ci = (int(d) for d in call.args[1].ty.shape)
    except (TypeError, AttributeError):  # a symbolic dimension or no shape
        return None
    pointwise = (kh, kw) == (1, 1) and int(attrs.groups) == 1
    plain = all(int(s) == 1 for s in attrs.strides) and all(int(p) == 0 for p in attrs.padding)
    if not (pointwise and plain and flattened(h, w, c, lanes, budget)):
        return None
    x = builder.emit(relax.op.reshape(call.args[0], [n, 1, h * w, ci]))
    return builder.normalize(_conv(x, call.args[1], attrs, [0, 0, 0, 0]))


def _conv(x, weight, attrs, padding):
    """The convolution ``attrs`` describe, on ``x`` and ``weight``, with ``padding``."""
    from tvm import relax

    return relax.op.nn.conv2d(
        x,
        weight,
        strides=[int(s) for s in attrs.strides],
        padding=padding,
        dilation=[int(d) for d in attrs.dilation],
        groups=int(attrs.groups),
        data_layout=attrs.data_layout,
        kernel_layout=attrs.kernel_layout,
        out_layout=attrs.out_layout,
        out_dtype=attrs.out_dtype,
    )


def _constant(expr):
    from tvm import ir

    return expr.value.numpy() if isinstance(expr, ir.expr.Constant) else None


def _cropped(builder, call, width: int | None, channels: int | None):
    """``strided_slice(conv(x, padding right + extra·stride, zero filters), [0, W), [0, C))``."""
    import numpy as np
    from tvm import relax

    attrs = call.attrs
    w, c = int(call.ty.shape[2]), int(call.ty.shape[3])
    top, left, bottom, right = (int(p) for p in attrs.padding)
    if width is not None:
        right += (width - w) * int(attrs.strides[1])
    x, weight = call.args
    if channels is not None:
        filters = _constant(weight)
        weight = relax.const(np.pad(filters, [(0, channels - c)] + [(0, 0)] * 3))
    wide = builder.emit(_conv(x, weight, attrs, [top, left, bottom, right]))
    axes = [a for a, grown in ((2, width), (3, channels)) if grown is not None]
    ends = [w if a == 2 else c for a in axes]
    return relax.op.strided_slice(wide, axes=axes, begin=[0] * len(axes), end=ends)
