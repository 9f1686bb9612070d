"""Schedules of the Winograd transforms (:mod:`graphopt.compiler.relax.winograd`).

Both transforms work tile by tile: one parallel iteration per (tile, block of ``lanes``
channels), the ``α × α`` window's loops unrolled, so that every coefficient of ``Bᵀ`` and ``Aᵀ``
(a chain of selects on the loop indices) folds to a constant, and the channels in vectors.

* input: the rows pass (``Bᵀ d``) is computed into a per-tile buffer of ``α × α`` vectors
  (on the stack), the columns pass (``· B``) reads it;
* output: the ``m × m`` outputs of a tile accumulate in registers, and the convolution's
  fused epilogue (bias, ReLU, residual add) runs on them as they are written.

The GEMM between them is an ordinary batched matmul and gets the reduction rule's tile.
"""

from __future__ import annotations

from tvm import s_tir

from graphopt.compiler.relax.winograd import INPUT, KERNEL, OUTPUT
from graphopt.compiler.tir.schedules.loops import DECLINED, inline_epilogue, vectorize_tile
from graphopt.compiler.tir.schedules.tiles import const_int, vector_lanes


def kind(func) -> str | None:
    """``INPUT`` or ``OUTPUT`` for a kernel holding a Winograd transform, else None."""
    sch = s_tir.Schedule(func)
    for name in (INPUT, OUTPUT):
        try:
            sch.get_sblock(name)
        except DECLINED:
            continue
        return name
    return None


def schedule(func, which: str, width: int):
    """The schedule of a Winograd transform kernel of :func:`kind` ``which``, or None when a
    step declines."""
    sch = s_tir.Schedule(func)
    try:
        if which == INPUT:
            _input(sch, width)
        else:
            _output(sch, width)
    except DECLINED:
        return None
    return sch


def _input(sch, width: int) -> None:
    main, rows = sch.get_sblock(INPUT), sch.get_sblock(INPUT + "_rows")
    element, tile, channel, s = sch.get_loops(main)
    alpha = _square_root(const_int(sch.get(element).extent))
    lanes = vector_lanes(const_int(sch.get(channel).extent), width)
    c_outer, c_lane = sch.split(channel, [None, lanes])
    xi, nu = sch.split(element, [alpha, alpha])
    sch.reorder(tile, c_outer, xi, nu, s, c_lane)
    sch.compute_at(rows, c_outer, preserve_unit_loops=True)
    r_xi, r_s, _, r_lane, r = sch.get_loops(rows)[2:]
    sch.reorder(r_xi, r_s, r, r_lane)
    sch.parallel(sch.fuse(tile, c_outer))
    for loop in (xi, nu, s, r_xi, r_s, r):
        sch.unroll(loop)
    sch.vectorize(c_lane)
    sch.vectorize(r_lane)
    sch.decompose_reduction(rows, r)
    sch.decompose_reduction(main, s)


def _output(sch, width: int) -> None:
    block = sch.get_sblock(OUTPUT)
    batch, y, x, k, xi, nu = sch.get_loops(block)
    m = const_int(sch.get(xi).extent) - KERNEL + 1
    lanes = vector_lanes(const_int(sch.get(k).extent), width)
    ty, iy = sch.split(y, [None, m])
    tx, ix = sch.split(x, [None, m])
    k_outer, k_lane = sch.split(k, [None, lanes])
    sch.reorder(batch, ty, tx, k_outer, iy, ix, xi, nu, k_lane)
    accumulator = sch.cache_write(block, 0, "local")
    writeback = inline_epilogue(sch, accumulator)
    sch.reverse_compute_at(writeback, k_outer, preserve_unit_loops=True)
    sch.parallel(sch.fuse(batch, ty, tx, k_outer))
    for loop in (iy, ix, xi, nu):
        sch.unroll(loop)
    sch.vectorize(k_lane)
    init = sch.decompose_reduction(block, xi)
    for b in (init, writeback):
        vectorize_tile(sch, sch.get_loops(b)[1:], width)


def _square_root(n: int) -> int:
    root = round(n**0.5)
    if root * root != n:
        raise ValueError(f"{n} window elements is not a square")
    return root
