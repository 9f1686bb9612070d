"""Products padded to whole tiles: a 197-token matmul computes 200 rows, and keeps 197.

A tile's register loop must divide its extent, and its vector loop fills vectors only where a
power of two divides it (TVM 0.27 puts a predicate on every multiply-add of a split with a
remainder, and does not vectorise one). A prime extent, ViT-B/16's 197 tokens, left every
linear layer of the model one row per tile and the attention's ``Q · Kᵀ`` one lane per vector.

When the tile model (:func:`.tiles.shape_score`, times the share of useful work) gains at least
:data:`MIN_GAIN` by rounding the vector and register loops up, TVM's ``pad_einsum`` pads the
block: zero-filled copies of the operands those loops index (activations only: a constant
operand would be copied at every call), the product over the padded domain, and a crop back to
the real one, into which the tile's write-back and epilogue are folded (the predicate sits on
the write-back, not on the multiply-adds). Only blocks that index their buffers by plain loop
variables can be padded (matmuls, dense layers, 1×1 convolutions), which is all ``pad_einsum``
takes.
"""

from __future__ import annotations

from graphopt.compiler.tir.schedules.tiles import (
    Tile,
    const_int,
    expr_vars,
    shape_score,
    vector_lanes,
)

# Padding costs a copy of the operands and a crop: taken only when the tile model gains this.
MIN_GAIN = 1.25


def padding(block, extents: list[int], tile: Tile, width: int, budget: int, constants) -> list[int]:
    """Per iter var of ``block``, the multiple ``pad_einsum`` rounds its extent up to (all 1:
    no padding). ``tile`` is the unpadded tile, ``constants`` the buffers that must not be
    padded."""
    factors = [1] * len(block.iter_vars)
    if not _einsum(block) or tile.register_reads_vectors:
        return factors
    index_vars = [iv.var for iv in block.iter_vars]
    fixed = _indexing_constants(block, constants)
    v, r = tile.vector_loop, tile.register_loop
    pad_vector, pad_rows = index_vars[v] not in fixed, r is not None and index_vars[r] not in fixed
    best, choice = MIN_GAIN * _unpadded_score(extents, tile, width, budget), None
    for groups in range(1, budget + 1):
        for rows in range(1, budget // groups + 1):
            if not pad_rows and (r is None and rows > 1 or r is not None and extents[r] % rows):
                continue
            vector_multiple = width * groups if pad_vector else None
            score = _score(extents, v, r, width, groups, rows, vector_multiple)
            if score is not None and score > best:
                best, choice = score, (vector_multiple, rows)
    if choice is None:
        return factors
    vector_multiple, rows = choice
    if vector_multiple is not None and extents[v] % vector_multiple:
        factors[v] = vector_multiple
    if r is not None and extents[r] % rows:
        factors[r] = rows
    return factors


def _unpadded_score(extents, tile: Tile, width: int, budget: int) -> float:
    """The tile model's score of the best tile on the extents as they are."""
    from graphopt.compiler.tir.schedules.tiles import register_shapes

    lanes = vector_lanes(extents[tile.vector_loop], width)
    rows_max = extents[tile.register_loop] if tile.register_loop is not None else 1
    broadcast = not tile.register_reads_vectors
    g, r = register_shapes(
        extents[tile.vector_loop] // lanes, rows_max, budget, broadcast=broadcast
    )[0]
    return lanes / width * shape_score(g, r, broadcast)


def _score(extents, v: int, r: int | None, width: int, groups: int, rows: int, vector_multiple):
    """Score of a ``groups × rows`` tile on extents rounded up to it, times the useful share;
    None when the vector loop cannot be padded and its extent does not fit the tile."""
    ev = extents[v]
    if vector_multiple is None:
        lanes = vector_lanes(ev, width)
        if (ev // lanes) % groups:
            return None
        useful, full = lanes / width, 1.0
    else:
        padded = -(-ev // vector_multiple) * vector_multiple
        useful, full = 1.0, ev / padded
    if r is not None:
        padded_rows = -(-extents[r] // rows) * rows
        full *= extents[r] / padded_rows
    return useful * full * shape_score(groups, rows)


def _einsum(block) -> bool:
    """Whether every buffer access of ``block`` is indexed by plain iter vars or constants."""
    for region in [*block.reads, *block.writes]:
        for dim in region.region:
            if const_int(dim.extent) != 1:
                return False
            index = dim.min
            if const_int(index) is None and not any(
                index.same_as(iv.var) for iv in block.iter_vars
            ):
                return False
    return True


def _indexing_constants(block, constants) -> set:
    """The iter vars that index a constant buffer (weights)."""
    used = set()
    for region in block.reads:
        if region.source.name in constants:
            for dim in region.region:
                used |= expr_vars(dim.min)
    return used


def padded_text(extents: list[int], factors: list[int]) -> str:
    """ ", padded 197->200" for each padded loop (ASCII: it reaches the tuning database)."""
    parts = [
        f"{e}->{-(-e // f) * f}" for e, f in zip(extents, factors, strict=False) if f > 1 and e % f
    ]
    return ", padded " + " ".join(parts) if parts else ""
