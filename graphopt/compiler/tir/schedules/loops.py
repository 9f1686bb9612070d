"""Loop-nest steps the schedule rules share: folding an epilogue into a tile's write-back,
unrolling and vectorising a tile's loops, and the injective loop nest (vectorised innermost,
parallel outside).
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info

from graphopt.compiler.tir.schedules.seams import split_at_seams
from graphopt.compiler.tir.schedules.tiles import const_int, expr_vars, vector_lanes

# what a schedule step raises when it rejects a kernel (TVM's checks) or finds no buffer
DECLINED = (s_tir.ScheduleError, RuntimeError, ValueError, StopIteration)


def trivially_bound(sch, main) -> bool:
    """Each loop around the block binds exactly one of its iter vars, in order."""
    loops = sch.get_loops(main.block_rv)
    return len(loops) == len(main.iters) and all(
        sch.get(loop).same_as(sch.get(info.loop_rv))
        for loop, info in zip(loops, main.iters, strict=True)
    )


def inline_epilogue(sch, writeback):
    """Fold the element-wise consumers of the write-back into it; a diamond (SiLU ``x · σ(x)``,
    GELU) is inlined forward to one consumer first (docs/explanation/cpu_schedules.md). A
    consumer over fewer iterations (the crop after a padded tile, :mod:`.padding`) takes the
    write-back in instead: TVM's ``reverse_compute_inline`` would keep the padded domain and
    write past the end of the consumer's buffer. Returns the block that writes the tile out."""
    while True:
        consumers = sch.get_consumers(writeback)
        if len(consumers) > 1:
            if not _inline_one_forward(sch, consumers):
                return writeback
            continue
        if not consumers:
            return writeback
        if _crops(sch, consumers[0], writeback):
            sch.compute_inline(writeback)
            writeback = consumers[0]
            continue
        if _size(sch, consumers[0]) > _size(sch, writeback):  # a broadcast: its own loop
            return writeback
        try:
            sch.reverse_compute_inline(consumers[0])
        except DECLINED:  # not element-wise: it stays a loop of its own
            return writeback


def downstream(sch, block) -> list:
    """Every block that reads ``block``'s output, directly or not, in order."""
    found, frontier = [], list(sch.get_consumers(block))
    while frontier:
        b = frontier.pop(0)
        if not any(sch.get(b).same_as(sch.get(f)) for f in found):
            found.append(b)
            frontier += list(sch.get_consumers(b))
    return found


def _size(sch, block) -> int:
    """Iterations of ``block`` (0 when an extent is not constant)."""
    return math.prod(const_int(iv.dom.extent) or 0 for iv in sch.get(block).iter_vars)


def _crops(sch, consumer, producer) -> bool:
    """Whether ``consumer`` iterates over a smaller domain than ``producer`` (same rank)."""
    inner = [const_int(iv.dom.extent) for iv in sch.get(consumer).iter_vars]
    outer = [const_int(iv.dom.extent) for iv in sch.get(producer).iter_vars]
    if len(inner) != len(outer) or None in inner or None in outer:
        return False
    return inner != outer and all(a <= b for a, b in zip(inner, outer, strict=True))


def _inline_one_forward(sch, blocks) -> bool:
    """Inline the first of ``blocks`` TVM lets be inlined into its consumers; whether one was."""
    for block in blocks:
        try:
            sch.compute_inline(block)
            return True
        except s_tir.ScheduleError:
            continue
    return False


def vectorize_tile(sch, loops, width: int) -> None:
    """Unroll a tile's loops and vectorise the innermost where it fills vectors. A loop whose
    extent is not a constant (a per-tile padding window clipped at the border) is left as it
    is: TVM rejects unrolling it only when it builds, too late for the rule to decline."""
    if not loops:
        return
    for loop in loops[:-1]:
        if const_int(sch.get(loop).extent) is not None:
            sch.unroll(loop)
    extent = const_int(sch.get(loops[-1]).extent)
    if extent is None:
        return
    lanes_ = vector_lanes(extent, width)
    if lanes_ == 1:
        sch.unroll(loops[-1])
        return
    vector = loops[-1] if lanes_ == extent else sch.split(loops[-1], [None, lanes_])[1]
    sch.vectorize(vector)


_MIN_PARALLEL = 16  # outer iterations that keep the threads busy


def schedule_injective_block(sch, block, width: int) -> None:
    """Vectorise the innermost loop (the part that fills vectors), parallelise the others. An
    innermost loop too short for a full vector (an image's 3 channels) is unrolled inside a
    serial loop over the next axis, not fused into the parallel loop: there each element paid
    the fused index's divisions and its own bounds test (the padded 224×224×3 input of a first
    convolution took 0.115 ms of its 0.25). A loop along a concatenated axis runs one piece
    per input (:mod:`.seams`)."""
    if trivially_bound(sch, get_sblock_info(sch, block)) and split_at_seams(sch, block, width):
        return
    loops = sch.get_loops(block)
    extents = [const_int(sch.get(loop).extent) for loop in loops]
    if not loops or any(e is None for e in extents):
        return
    lanes_ = vector_lanes(extents[-1], width)
    if lanes_ > 1:
        across = _transposed_loop(sch, block, extents, width)
        outer, vector = sch.split(loops[-1], [None, lanes_])
        if across is not None:  # the serial loop the vectors gather along goes inside
            sch.reorder(outer, loops[across])
        sch.vectorize(vector)
        loops = sch.get_loops(block)[: -1 if across is None else -2]
    elif extents[-1] < width and len(loops) > 2 and math.prod(extents[:-2]) >= _MIN_PARALLEL:
        sch.unroll(loops[-1])
        loops = loops[:-2]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _transposed_loop(sch, block, extents, width: int) -> int | None:
    """The loop that walks the last (contiguous) axis of a transposing block's one input, when
    that is not the innermost loop and spans whole vectors (NHWC → NCHW: the channel loop)."""
    info = get_sblock_info(sch, block)
    reads = sch.get(block).reads
    if len(reads) != 1 or not trivially_bound(sch, info):
        return None
    last = expr_vars(reads[0].region[-1].min)
    hits = [i for i, iv in enumerate(info.iters) if iv.var in last]
    if len(hits) != 1 or hits[0] == len(extents) - 1 or extents[hits[0]] < width:
        return None
    return hits[0]


def simplify_indices(sch) -> None:
    """:func:`simplify_block` on every block of the kernel.

    Legalized reshapes index by flattening and unflattening (``((a·64 + b) // 768 + c) % 197``
    for ``c``); a chain of them, inlined into one kernel, nests those expressions, and no TVM pass
    simplifies them, as none binds a block's iter vars to their ranges. The vector loop of such a
    kernel gathered lane by lane: one 12 × 197 × 64 attention transpose took 2.7 ms for 600 KB.
    With the bounds bound, ``(a·64 + b) // 768`` is 0 and the modulo vanishes."""
    for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
        simplify_block(sch, block_rv)


def simplify_block(sch, block_rv) -> None:
    """Rewrite the block's buffer indices (and its reduction's init), simplified with its iter
    vars' bounds; a block whose body is not one store is left as it is."""
    from tvm import ir
    from tvm.sym import Analyzer

    block = sch.get(block_rv)
    stores = [block.body] + ([block.init] if block.init is not None else [])
    if not all(isinstance(s, tirx.BufferStore) for s in stores):
        return
    analyzer = Analyzer()
    for iv in block.iter_vars:
        analyzer.bind(iv.var, iv.dom)

    def store(s):
        indices = [analyzer.simplify(i) for i in s.indices]
        return tirx.BufferStore(s.buffer, analyzer.simplify(s.value), indices)

    def regions(accesses):
        return [
            tirx.stmt.BufferRegion(
                a.source,
                [ir.Range.from_min_extent(analyzer.simplify(d.min), d.extent) for d in a.region],
            )
            for a in accesses
        ]

    new = s_tir.SBlock(
        block.iter_vars,
        regions(block.reads),
        regions(block.writes),
        block.name_hint,
        store(block.body),
        store(block.init) if block.init is not None else None,
        block.alloc_buffers,
        block.match_buffers,
        block.annotations,
    )
    sch.state.replace(sch.get_sref(block_rv), new, {block: new})
