"""Sigmoid → ``1 / (1 + fast_exp(−x))``, GELU → ``x · (1 + fast_erf(x/√2)) / 2``, softmax →
``e / Σe`` with ``e = fast_exp(x − max x)``: polynomials that vectorise, NaN kept.

TVM lowers ``tir.sigmoid`` to ``1 / (1 + exp(−x))`` with LLVM's ``exp`` intrinsic, which x86
LLVM without a vector math library turns into one scalar ``expf`` call per lane: every
SiLU / sigmoid epilogue (EfficientNet, MobileNetV3, RegNet-Y's squeeze-excitation gates) ran
at a few percent of the machine's peak. TOPI's ``fast_exp`` (range reduction to 2^n times a
polynomial, the 2^n built from the exponent bits) vectorises. Its error against
PyTorch's sigmoid is within 5e-7 relative (4 float32 ulps) from −120 to 120
(``tests/compiler/test_non_finite.py``); it clamps its input to ±88.4, so far out the result
saturates as PyTorch's does. A NaN input comes out NaN through the exp itself
(:func:`exp_keeping_nan`), not through a select: inside a convolution's epilogue the select
stopped TVM's vectoriser (measured on an AVX2 EPYC, a 1×1 16 → 96 convolution at 112² with
SiLU 5.05 → 0.86 ms, with ReLU 0.27; EfficientNet-B0 end to end 2.5 → 0.96× ONNX Runtime).

GELU's ``erf`` fared the same (the zoo benchmark's ConvNeXt-T and MiniLM GELU kernels ran at 1 %
of peak); TOPI's ``fast_erf`` (a rational approximation on [−4, 4], ±1 outside) is within 1e-6
absolute of PyTorch's GELU from −20 to 20.

Softmax's ``exp`` likewise; with the row schedule (``schedules.rows``, reductions as vector
partials) a 12 × 128 × 128 attention softmax went 0.83 → 0.33 → 0.13 ms a kernel on an
AVX-512 Xeon (2 threads; PyTorch 0.08 ms). Against a float64
softmax it is within 1.25× the error of PyTorch's float32 one; masked (−inf) logits give 0.

Measured untuned on an AVX2 EPYC, 2 threads, interleaved: EfficientNet-B0 50.96 → 30.77 ms
(PyTorch eager 49.3 ms), a conv/SiLU/depthwise/SiLU block at 56×56 5.41 → 3.51 ms, a GELU
over 128 × 1536 values 2.26 → 0.50 ms.
"""

from __future__ import annotations


def fast_math_legalizations() -> dict:
    """``LegalizeOps`` entries for ``relax.sigmoid``, ``relax.nn.gelu`` and ``relax.nn.softmax``
    as above."""
    return {
        "relax.sigmoid": _legalize_sigmoid,
        "relax.nn.gelu": _legalize_gelu,
        "relax.nn.softmax": _legalize_softmax,
    }


def _legalize_sigmoid(bb, call):
    return bb.call_te(sigmoid, call.args[0], primfunc_name_hint="sigmoid")


def sigmoid(x):
    """``1 / (1 + exp(−x))`` with :func:`exp_keeping_nan`: no select, so it vectorises inside
    a convolution's epilogue too."""
    from tvm import te, tirx

    one = tirx.const(1, x.dtype)
    return te.compute(x.shape, lambda *i: one / (one + exp_keeping_nan(-x(*i))), tag="elemwise")


# TOPI's fast_exp: exp(x) = 2ⁿ · p(r), n = round(x · log₂e), r = x − n · ln 2 (Cephes' expf)
_EXP_HIGH, _EXP_LOW = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2 = 1.44269504088896341, 0.6931471805599453
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2)
_EXP_POLY += (1.6666665459e-1, 5.0000001201e-1)


def exp_keeping_nan(v):
    """``exp(v)`` for a float32 TIR value, as TOPI's ``fast_exp`` computes it, except that NaN
    comes out NaN with no select: the clamp to ±88.4 puts its constants first (TVM's ``min(a, b)``
    is ``a < b ? a : b``, so a NaN ``v`` passes through), and ``n`` is clamped the other way
    round (a NaN ``n`` becomes finite, so the exponent bits are defined). TOPI's version needs a
    ``select(isnan(x), x, …)`` around it, and a select holding it inside a convolution's
    epilogue made TVM's vectoriser give up: a sigmoid epilogue ran one lane at a time, 10× the
    convolution (EfficientNet-B0: 2.7× ONNX Runtime)."""
    from tvm import tirx

    def c(value):
        return tirx.const(value, "float32")

    clamped = tirx.min(c(_EXP_HIGH), tirx.max(c(_EXP_LOW), v))
    n = tirx.floor(clamped * c(_LOG2E) + c(0.5))
    r = clamped - n * c(_LN2)
    poly = c(_EXP_POLY[0])
    for coefficient in _EXP_POLY[1:]:
        poly = poly * r + c(coefficient)
    poly = poly * r * r + r + c(1.0)
    finite_n = tirx.min(tirx.max(n, c(-127.0)), c(128.0))  # NaN n → a finite exponent
    two_n = tirx.reinterpret("float32", tirx.Cast("int32", finite_n + c(127.0)) << 23)
    return tirx.max(two_n * poly, v)  # +inf stays inf; e^v > v everywhere else


def _legalize_gelu(bb, call):
    if str(call.args[0].ty.dtype) != "float32":
        return call  # TVM's legalization (fast_erf is float32 and float16 only)
    return bb.call_te(gelu, call.args[0], primfunc_name_hint="gelu")


def gelu(x):
    """``x · (1 + fast_erf(x / √2)) / 2``, NaN kept, ±inf as PyTorch's (inf, NaN).

    No ``isnan``/``isinf`` test: TVM's vectoriser runs a loop holding one a float at a time
    (a convolution's GELU epilogue was scalar). A NaN ``x`` stays NaN through the product; the
    factor is exactly 0 below −10 (where ``x·Φ(x)`` is under 1e-22), so ``−inf`` gives
    ``−inf · 0 = NaN`` as PyTorch does, not ``−inf`` times ``fast_erf``'s rounding above −1."""
    from tvm import te, tirx, topi

    erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5**0.5, x.dtype)))
    half, zero = tirx.const(0.5, x.dtype), tirx.const(0.0, x.dtype)
    below = tirx.const(-10.0, x.dtype)

    def value(*i):
        v = x(*i)
        return v * tirx.Select(v < below, zero, half + erf(*i) * half)

    return te.compute(x.shape, value, tag="elemwise")


def _legalize_softmax(bb, call):
    if str(call.args[0].ty.dtype) not in ("float32", "float16"):
        return call  # TVM's legalization (fast_exp is float32 and float16 only)
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


def softmax(x, axis: int):
    """``e / Σe`` with ``e = fast_exp(x − max x)`` along ``axis``, NaN kept (a row holding a
    NaN, or only −inf, comes out NaN as in PyTorch)."""
    from tvm import te

    axis = axis % len(x.shape)
    keep = [i for i in range(len(x.shape)) if i != axis]
    rows = [x.shape[i] for i in keep]

    def row_reduce(tensor, combine, name):
        k = te.reduce_axis((0, x.shape[axis]), name="k")

        def value(*r):
            index = list(r[:axis]) + [k] + list(r[axis:])
            return combine(tensor(*index), axis=k)

        return te.compute(rows, value, name=name)

    def of_row(tensor, i):
        return tensor(*[i[d] for d in keep])

    top = row_reduce(x, te.max, "softmax_max")
    e = te.compute(x.shape, lambda *i: exp_keeping_nan(x(*i) - of_row(top, i)), name="softmax_exp")
    total = row_reduce(e, te.sum, "softmax_sum")
    return te.compute(x.shape, lambda *i: e(*i) / of_row(total, i), name="softmax_norm")
