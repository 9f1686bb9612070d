"""Grouped convolutions: the output-channel loop split into (group, channel within the group).

An output channel ``f`` of a grouped convolution reads the input channels of its group,
``f // opg · cpg + rc`` (``opg`` outputs and ``cpg`` inputs per group): not linear in ``f``, so
no vector could run along the output channels, and the tile fell back to the image width, whose
input reads are strided (ResNeXt-50's 3×3 convolutions: 2 of 16 lanes). Split ``f`` into
``(g, f')`` in the block's own iteration space (``transform_block_layout``) and the input index
becomes ``g · cpg + rc``: the channels of a group share every input value (a broadcast) and
their weights are contiguous, the tile of a dense convolution with ``opg`` outputs per group.
"""

from __future__ import annotations

from tvm import tirx

from graphopt.compiler.tir.schedules.loops import simplify_block
from graphopt.compiler.tir.schedules.tiles import const_int, expr_vars

_DATA_PAR = 0  # IterVar.iter_type of a spatial iter var


def split_grouped_channels(sch, block_rv) -> bool:
    """Split the first spatial iter var that a read divides by a constant (its group width);
    whether one was."""
    block = sch.get(block_rv)
    for k, iv in enumerate(block.iter_vars):
        extent = const_int(iv.dom.extent)
        if int(iv.iter_type) != _DATA_PAR or extent is None:
            continue
        width = group_width(block, iv.var, extent)
        if width is None:
            continue

        index_map = tirx.IndexMap.from_func(_split(k, width), ndim=len(block.iter_vars))
        sch.transform_block_layout(block_rv, index_map)
        simplify_block(sch, block_rv)
        return True
    return False


def _split(k: int, width: int):
    def split(*axes):
        return [*axes[:k], axes[k] // width, axes[k] % width, *axes[k + 1 :]]

    return split


def group_width(block, var, extent: int) -> int | None:
    """The ``d`` of a ``var // d`` in the block's read indices (1 < d < extent, d | extent)."""
    for region in block.reads:
        for dim in region.region:
            for d in _divisors_of(dim.min, var):
                if 1 < d < extent and extent % d == 0:
                    return d
    return None


def _divisors_of(expr, var) -> list[int]:
    """The constant divisors ``d`` of every ``floordiv(a, d)`` in ``expr`` whose ``a`` uses
    ``var``."""
    found = []
    if isinstance(expr, tirx.FloorDiv) and var in expr_vars(expr.a):
        d = const_int(expr.b)
        found += [d] if d is not None else []
    for child in ("a", "b"):
        sub = getattr(expr, child, None)
        if sub is not None and not isinstance(sub, int | float):
            found += _divisors_of(sub, var)
    return found


def unflatten_write(sch, block_rv) -> None:
    """Index the block's (local) output like its iteration space: a dimension written at
    ``g·width + f`` (``f < width``, a split channel loop) becomes two, ``(g, f)``. Without it
    TVM cannot tell which part of the accumulator a tile touches, and every tile allocated a
    whole output's worth."""
    from tvm.sym.pattern import detect_linear_equation

    block = sch.get(block_rv)
    extents = {iv.var: const_int(iv.dom.extent) for iv in block.iter_vars}
    dims = [d.min for d in block.writes[0].region]
    for k in reversed(range(len(dims))):
        used = [v for v in extents if v in expr_vars(dims[k])]
        if len(used) != 2:
            continue
        for outer, inner in (used, used[::-1]):
            c = detect_linear_equation(dims[k], [outer, inner])
            width = extents[inner]
            if len(c) == 3 and [const_int(x) for x in c] == [width, 1, 0]:
                index_map = tirx.IndexMap.from_func(_split(k, width), ndim=len(dims))
                sch.transform_layout(block_rv, ("write", 0), index_map)
                break
