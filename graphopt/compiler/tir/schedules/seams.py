"""Concatenation seams: a loop along a concatenated axis runs one piece per input.

TOPI computes ``concat(x₀, …, xₙ)`` along an axis ``c`` as a chain of tests,
``if_then_else(k₂ ≤ c, x₂[c − k₂], if_then_else(k₁ ≤ c, x₁[c − k₁], x₀[c]))``, and every
kernel the concatenation is fused into inherits the chain: DenseNet's BatchNorm + ReLU after
each concatenation, the padding before a convolution that reads one, the pooling after an
Inception block. Channels-last, ``c`` is the innermost loop, the one that is vectorised: each
vector evaluated every test of the chain, up to 48 deep in DenseNet-121 (the element-wise
kernels after its concatenations took 32 ms, as long as all its convolutions).

The loop over ``c`` is split into vectors and the loop over vectors partitioned at the seams
(``k₁, k₂, …``, whole vectors: the vector width is the largest that divides every seam); in
each piece TVM's simplifier proves every test of the chain, so the piece is a plain vector
loop over one input.
"""

from __future__ import annotations

import math

import tvm_ffi
from tvm import ir, tirx

from graphopt.compiler.tir.schedules.tiles import const_int, expr_vars, vector_lanes

_IF_THEN_ELSE = ir.Op.get("prim.if_then_else")


def split_at_seams(sch, block, width: int) -> bool:
    """Schedule an injective ``block`` whose innermost loop crosses concatenation seams: vectors
    of the largest width ≤ ``width`` dividing every seam, one loop of them per input, the
    outer loops fused and parallel. The block's loops must be its own, one per iter var in
    order (:func:`.loops.trivially_bound`). False (nothing changed) where the innermost loop
    has no seams or a test on it has a form this does not read."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    extent = const_int(sch.get(loops[-1]).extent)
    cuts = [] if extent is None else seams(sch.get(block), extent)
    if not cuts:
        return False
    lanes = vector_lanes(math.gcd(extent, *cuts), width)
    pieces = loops[-1]
    if lanes > 1:
        pieces, vector = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vector)
    sizes = [(b - a) // lanes for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    sch.loop_partition(pieces, [*sizes, None])
    outer = loops[:-1]
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return True


def seams(block, extent: int) -> list[int]:
    """Sorted offsets in ``(0, extent)`` where the block's innermost iter var crosses from one
    concatenated input to the next; [] when a test on it has another form."""
    var = block.iter_vars[-1].var
    cuts: set[int | None] = set()

    def visit(node):
        if node.op.same_as(_IF_THEN_ELSE):
            condition = node.args[0]
            if any(v.same_as(var) for v in expr_vars(condition)):
                cuts.add(_cut(condition, var))

    tvm_ffi.structural_walk(block.body, (ir.expr.Call, visit), order="post")
    if None in cuts:
        return []
    return sorted(c for c in cuts if 0 < c < extent)


def _cut(condition, var) -> int | None:
    """The first ``var`` on the far side of a comparison with a constant (``k ≤ var``,
    ``var < k``: ``k``; ``k < var``, ``var ≤ k``: ``k + 1``); None for any other test."""
    kinds = {tirx.LE: False, tirx.LT: True, tirx.GE: False, tirx.GT: True}  # strict?
    kind = next((k for k in kinds if isinstance(condition, k)), None)
    if kind is None:
        return None
    low, high = condition.a, condition.b
    if kind in (tirx.GE, tirx.GT):  # a ≥ b ⇔ b ≤ a
        low, high = high, low
    strict = kinds[kind]
    if const_int(low) is not None and high.same_as(var):  # k ≤ var, k < var
        return const_int(low) + strict
    if const_int(high) is not None and low.same_as(var):  # var < k, var ≤ k
        return const_int(high) + (not strict)
    return None
