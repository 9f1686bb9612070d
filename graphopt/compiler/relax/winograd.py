"""Winograd convolution: ``Conv(3×3, stride 1) → Aᵀ[Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)]A``, a batched GEMM.

Every tile of ``m × m`` outputs needs an ``α × α`` window of the input (``α = m + 2``). The
window is transformed (``V = Bᵀ d B``), multiplied element by element with the transformed
weights (``U = G g Gᵀ``, computed once, at compile time) and summed over input channels, which
for all tiles at once is ``α²`` independent GEMMs ``[tiles × C_in] · [C_in × C_out]``; the
result is transformed back (``Y = Aᵀ M A``). F(4×4, 3×3) does the convolution with 36 instead
of 144 multiply-adds per 16 outputs and channel pair; the GEMM runs with graphopt's default
matmul schedule, the two transforms with their own (:mod:`.schedules.winograd`), the output
transform with the convolution's epilogue (bias, ReLU, residual add) fused into it.

Matrices come from the Cook–Toom construction on the points in :data:`POINTS` (and ∞), in
float64; ``{0, −1, 1, ½, −2}`` gives F(4×4, 3×3) the smallest float32 error of the sets tried
(2.9e-6 against 4.3e-6 for Lavin's ``{0, ±1, ±2}``, mean over random 6×6 windows).

:func:`winograd_convolutions` rewrites a channels-last convolution only where
:func:`choose_tile` finds the GEMM at most :data:`MAX_WORK` of the direct convolution's work
and the transformed weights fit :data:`MAX_WEIGHT_BYTES` (a 7×7 layer's tiles are too few to pay
for weights that grow ``α²/9``-fold). See docs/explanation/cpu_schedules.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

POINTS = (0.0, -1.0, 1.0, 0.5, -2.0, -0.5, 2.0)
TILES = (4, 2)  # output tile sizes tried, largest first
MAX_WORK = 0.5  # GEMM multiply-adds / direct multiply-adds
MAX_WEIGHT_BYTES = 8 << 20
MIN_CHANNELS = 32
# three kernel launches instead of one: below this much direct work (multiply-adds) the two
# extra launches cost what the GEMM saves (CIFAR ResNet-56, 2.4M-MAC layers: 1.20 → 1.33 ms)
MIN_MACS = 16_000_000
KERNEL = 3  # r: the rewrite takes 3×3 convolutions
INPUT, OUTPUT = "graphopt_winograd_input", "graphopt_winograd_output"  # TE (block) names
INPUT_KERNEL, OUTPUT_KERNEL = "winograd_input", "winograd_output"  # kernel (PrimFunc) names
_OUT_EWISE_FUSABLE = 4  # TVM's kOutEWiseFusable: the epilogue fuses into the output transform
_OPAQUE = 8


@dataclass(frozen=True)
class Transform:
    """F(m×m, r×r): ``Aᵀ`` (m×α), ``G`` (α×r), ``Bᵀ`` (α×α), float64."""

    m: int
    r: int
    AT: np.ndarray
    G: np.ndarray
    BT: np.ndarray

    @property
    def alpha(self) -> int:
        return self.m + self.r - 1


@cache
def transform(m: int, r: int = KERNEL) -> Transform:
    """Cook–Toom matrices: evaluate at ``α − 1`` points and ∞, multiply, interpolate."""
    alpha = m + r - 1
    points = np.array(POINTS[: alpha - 1])
    at = np.zeros((m, alpha))
    at[:, :-1] = points[None, :] ** np.arange(m)[:, None]
    at[m - 1, -1] = 1.0
    g = np.zeros((alpha, r))
    g[:-1] = points[:, None] ** np.arange(r)[None, :]
    g[-1, r - 1] = 1.0
    vandermonde = np.zeros((alpha, alpha))
    vandermonde[:-1] = points[:, None] ** np.arange(alpha)[None, :]
    vandermonde[-1, -1] = 1.0
    return Transform(m, r, at, g, np.linalg.inv(vandermonde).T)


def transformed_weights(weight_ohwi: np.ndarray, t: Transform) -> np.ndarray:
    """``U[ξα+ν, ci, co] = (G g[co, :, :, ci] Gᵀ)[ξ, ν]``, float64 then cast."""
    u = np.einsum("ak,okxi,bx->abio", t.G, weight_ohwi.astype(np.float64), t.G)
    return u.reshape(t.alpha * t.alpha, *u.shape[2:]).astype(weight_ohwi.dtype)


def choose_tile(height: int, width: int, c_in: int, c_out: int) -> int | None:
    """The output tile ``m`` for a 3×3 convolution with this output size, or None when direct
    is the better choice (see the module)."""
    direct = 9 * height * width
    if min(c_in, c_out) < MIN_CHANNELS or direct * c_in * c_out < MIN_MACS:
        return None
    for m in TILES:
        alpha = m + 2
        work = alpha * alpha * math.ceil(height / m) * math.ceil(width / m)
        if work <= MAX_WORK * direct and alpha * alpha * c_in * c_out * 4 <= MAX_WEIGHT_BYTES:
            return m
    return None


def coefficient(matrix: np.ndarray, i, j):
    """``matrix[i, j]`` for TIR index expressions: a chain of selects over the non-zero entries,
    folded to a constant once the loops over ``i`` and ``j`` are unrolled."""
    from tvm import tirx

    value = tirx.const(0.0, "float32")
    for (a, b), entry in np.ndenumerate(matrix):
        if entry != 0.0:
            value = tirx.Select(
                tirx.all(i == a, j == b), tirx.const(float(entry), "float32"), value
            )
    return value


def input_transform(x, t: Transform, pad: tuple[int, int], out_hw: tuple[int, int]):
    """TE: ``V[ξα+ν, tile, c] = (Bᵀ d B)[ξ, ν]`` over every tile's zero-padded window of the
    NHWC input ``x``, as two one-dimensional passes (rows, then columns)."""
    from tvm import te, tirx

    n, h, w, c = (int(d) for d in x.shape)
    alpha, m = t.alpha, t.m
    tiles_h, tiles_w = (math.ceil(o / m) for o in out_hw)

    def pixel(p, dy, dx, ch):
        b, ty, tx = p // (tiles_h * tiles_w), p // tiles_w % tiles_h, p % tiles_w
        y, x_ = ty * m + dy - pad[0], tx * m + dx - pad[1]
        inside = tirx.all(y >= 0, y < h, x_ >= 0, x_ < w)
        return tirx.if_then_else(inside, x[b, y, x_, ch], tirx.const(0.0, "float32"))

    tiles = n * tiles_h * tiles_w
    r = te.reduce_axis((0, alpha), "r")
    rows = te.compute(
        (alpha, alpha, tiles, c),
        lambda xi, s, p, ch: te.sum(coefficient(t.BT, xi, r) * pixel(p, r, s, ch), axis=r),
        name=INPUT + "_rows",
    )
    s = te.reduce_axis((0, alpha), "s")
    return te.compute(
        (alpha * alpha, tiles, c),
        lambda e, p, ch: te.sum(
            rows[e // alpha, s, p, ch] * coefficient(t.BT, e % alpha, s), axis=s
        ),
        name=INPUT,
    )


def output_transform(product, t: Transform, n: int, out_hw: tuple[int, int]):
    """TE: ``Y[b, y, x, k] = (Aᵀ M A)[y mod m, x mod m]`` of the tile holding ``(y, x)``."""
    from tvm import te

    alpha, m = t.alpha, t.m
    tiles_h, tiles_w = (math.ceil(o / m) for o in out_hw)
    xi = te.reduce_axis((0, alpha), "xi")
    nu = te.reduce_axis((0, alpha), "nu")

    def value(b, y, x, k):
        p = (b * tiles_h + y // m) * tiles_w + x // m
        weight = coefficient(t.AT, y % m, xi) * coefficient(t.AT, x % m, nu)
        return te.sum(product[xi * alpha + nu, p, k] * weight, axis=[xi, nu])

    return te.compute((n, *out_hw, int(product.shape[-1])), value, name=OUTPUT)


def winograd_convolutions():
    """The Relax module pass rewriting each channels-last 3×3 stride-1 convolution of constant
    float32 weights that :func:`choose_tile` accepts (run after ``channels_last``)."""
    import tvm
    from tvm import relax

    from graphopt.compiler.relax.calls import rewrite_calls

    def rewrite(builder, call):
        m = _tile_for(call)
        return None if m is None else _rewritten(builder, call, transform(m))

    return tvm.transform.Sequential(
        [
            relax.transform.FoldConstant(),  # ConvertLayout's transposed weights
            rewrite_calls("graphopt.WinogradConvolutions", "relax.nn.conv2d", rewrite),
        ]
    )


def _tile_for(call) -> int | None:
    from tvm import ir

    attrs, (x, weight) = call.attrs, call.args
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
    out = [int(d) for d in call.ty.shape] if hasattr(call.ty, "shape") else None
    kernel = [int(d) for d in weight.ty.shape] if hasattr(weight.ty, "shape") else [0] * 4
    if (
        not isinstance(weight, ir.expr.Constant)
        or layouts != ("NHWC", "OHWI", "NHWC")
        or str(weight.ty.dtype) != "float32"
        or str(x.ty.dtype) != "float32"
        or [int(s) for s in attrs.strides] != [1, 1]
        or [int(d) for d in attrs.dilation] != [1, 1]
        or int(attrs.groups) != 1
        or kernel[1:3] != [3, 3]
        or out is None
    ):
        return None
    return choose_tile(out[1], out[2], kernel[3], kernel[0])


def _rewritten(builder, call, t: Transform):
    """``output_transform(matmul(input_transform(x), U))`` for the convolution ``call``."""
    from tvm import relax

    x, weight = call.args
    n, out_h, out_w, _ = (int(d) for d in call.ty.shape)
    pad = (int(call.attrs.padding[0]), int(call.attrs.padding[1]))
    windows = builder.emit(
        builder.call_te(
            functools.partial(input_transform, t=t, pad=pad, out_hw=(out_h, out_w)),
            x,
            primfunc_name_hint=INPUT_KERNEL,
            primfunc_attrs={"op_pattern": _OPAQUE},
        )
    )
    u = relax.const(transformed_weights(weight.value.numpy(), t))
    product = builder.emit(relax.op.matmul(windows, u))
    return builder.call_te(
        functools.partial(output_transform, t=t, n=n, out_hw=(out_h, out_w)),
        product,
        primfunc_name_hint=OUTPUT_KERNEL,
        primfunc_attrs={"op_pattern": _OUT_EWISE_FUSABLE},
    )
