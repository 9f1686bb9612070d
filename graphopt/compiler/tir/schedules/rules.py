"""The schedule rules: reduction kernels get a register tile, injective kernels vectors.

Both are ``dlight`` rules: ``apply`` returns a schedule, or None to leave the kernel to TVM's
default (a kernel they cannot schedule is never scheduled wrongly: TVM's schedule primitives
check every step and a failed step declines the whole kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_sblock_info
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.common_schedules import try_inline

from graphopt.compiler.tir.schedules import TILE_ATTR, prefetch
from graphopt.compiler.tir.schedules.grouped import split_grouped_channels, unflatten_write
from graphopt.compiler.tir.schedules.loops import (
    DECLINED,
    downstream,
    inline_epilogue,
    schedule_injective_block,
    simplify_indices,
    trivially_bound,
    vectorize_tile,
)
from graphopt.compiler.tir.schedules.padding import padded_text, padding
from graphopt.compiler.tir.schedules.rows import schedule_rows
from graphopt.compiler.tir.schedules.tiles import (
    CACHE_BYTES,
    PACK,
    Tile,
    choose_tile,
    const_int,
    expr_vars,
    lanes,
    registers,
)


class _CPURule(ScheduleRule):
    """Declines non-LLVM targets and any kernel a schedule step rejects."""

    def apply(self, func, target, tunable):
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        try:
            return sch if self.schedule(sch, target) else None
        except DECLINED:
            return None


# --------------------------------------------------------------------------- reduction


class ReductionRule(_CPURule):
    """One reduction block, injective producers (padding), element-wise epilogue → tile.
    ``variant`` > 0 picks an alternative tile (see :func:`.tiles.choose_tile`)."""

    def __init__(self, variant: int = 0) -> None:
        super().__init__()
        self.variant = variant

    def schedule(self, sch, target) -> bool:
        simplify_indices(sch)
        width, budget = lanes(target), registers(target)
        plan = _plan(sch, width, budget, 0)
        if plan is None:
            return False
        block = sch.get(plan.main)
        factors = padding(block, plan.extents, plan.tile, width, budget, plan.constants)
        padded = _pad(sch, plan.main, factors)
        if padded or self.variant:
            plan = _plan(sch, width, budget, self.variant)
            if plan is None:
                return False
        main, tile, producers = plan.main, plan.tile, plan.producers
        # A depthwise tile reads few input values per multiply-add, a pool reads each once:
        # padding the whole input first costs them as much memory traffic as their work; they
        # pad each tile's window instead (ResNet-18's max pool: 0.175 → 0.102 ms). The copies
        # that pad a product to whole tiles run once, on their own.
        weights = plan.constants & {r.source.name for r in sch.get(main).reads}
        packed = _apply_layouts(sch, main, tile, producers)
        per_tile = producers if (tile.register_reads_vectors or not weights) and not padded else []
        # a weight-streaming kernel (blocks outermost, weights packed block by block)
        stream = packed[0] if tile.blocks_outermost and len(packed) == 1 else None
        prefetching = _tile_reduction(sch, main, tile, plan.spatial, width, per_tile, stream)
        for producer in producers:
            if per_tile:
                vectorize_tile(sch, sch.get_loops(producer)[1:], width)
            else:
                schedule_injective_block(sch, producer, width)
        text = describe(tile, plan.extents, width) + (
            ", prefetch next block" if prefetching else ""
        )
        if padded:
            text += padded_text([const_int(iv.dom.extent) for iv in block.iter_vars], factors)
        sch.annotate(sch.get_sblock("root"), TILE_ATTR, text)
        return True


@dataclass(frozen=True)
class _Plan:
    main: object  # the reduction block
    spatial: int  # its spatial iter vars (first)
    extents: list[int]
    producers: list  # blocks before it (padding) that stay
    constants: set[str]  # buffers the caller passes constants for
    tile: Tile


def _plan(sch, width: int, budget: int, variant: int) -> _Plan | None:
    """The kernel's reduction block and its tile, or None when the rule does not apply."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    infos = [get_sblock_info(sch, b) for b in blocks]
    mains = [i for i in infos if i.is_reduction()]
    if len(mains) != 1 or any(i.dom_kind().strip("S") for i in infos if i is not mains[0]):
        return None
    main = mains[0]
    if split_grouped_channels(sch, main.block_rv):
        main = get_sblock_info(sch, main.block_rv)
    kinds = main.dom_kind()
    spatial = kinds.count("S")
    extents = [const_int(i.dom) for i in main.iters[:spatial]]
    if spatial == 0 or kinds != "S" * spatial + "R" * (len(kinds) - spatial):
        return None
    if any(e is None for e in extents) or not trivially_bound(sch, main):
        return None  # symbolic shapes, or loops that do not map one-to-one to iter vars
    # TVM's NHWC convolution copies its whole input first even without padding (a 1×1
    # convolution's "pad_temp"): that copy is inlined, a real padding stays a producer
    producers = [b for b in _producers(sch, blocks, main.block_rv) if not _inlined(sch, b)]
    constants = _layout_free_buffers(sch)
    tile = choose_tile(
        sch.get(main.block_rv),
        extents,
        width,
        budget,
        constants=constants,
        intermediates={sch.get(b).writes[0].source.name for b in producers},
        variant=variant,
    )
    if tile is None:
        return None
    return _Plan(main.block_rv, spatial, extents, producers, constants, tile)


def _pad(sch, block, factors: list[int]) -> bool:
    """Pad ``block`` to the ``factors`` (:mod:`.padding`); whether it was (TVM declines blocks
    it cannot pad: tried on a copy of the schedule first)."""
    if all(f == 1 for f in factors):
        return False
    try:
        sch.copy().pad_einsum(block, factors)
    except DECLINED:
        return False
    sch.pad_einsum(block, factors)
    return True


def describe(tile: Tile, extents: list[int], width: int) -> str:
    """One line for reports, e.g. ``"16/16 lanes x 2 groups x 7 rows, pack param_0"``; a vector
    loop whose extent leaves lanes empty is said so (the layer's shape made it slow). ASCII only:
    it reaches the tuning database's JSON through the schedule's trace."""
    text = f"{tile.lanes}/{width} lanes x {tile.groups} groups x {tile.rows} rows"
    if tile.layouts:
        text += ", " + ", ".join(f"{how} {name}" for name, how in tile.layouts)
    if tile.blocks_outermost:
        text += ", vector blocks outermost"
    if tile.lanes < width:
        text += f"; shape-limited: vector loop extent {extents[tile.vector_loop]}"
    return text


def _producers(sch, blocks, main) -> list:
    """The blocks before the reduction (padding), which it reads."""
    out = []
    for b in blocks:
        if sch.get(b).same_as(sch.get(main)):
            return out
        out.append(b)
    return out


def _inlined(sch, block) -> bool:
    """Inline ``block`` if it only copies a buffer of the same shape, element for element."""
    from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad builds in TVM 0.27

    store = sch.get(block).body
    load = getattr(store, "value", None)
    if not isinstance(store, tirx.BufferStore) or not isinstance(load, TensorLoad):
        return False
    same_shape = [const_int(d) for d in store.buffer.shape] == [
        const_int(d) for d in load.source.shape
    ]
    same_index = len(store.indices) == len(load.indices) and all(
        a.same_as(b) for a, b in zip(store.indices, load.indices, strict=True)
    )
    if not (same_shape and same_index):
        return False
    sch.compute_inline(block)
    return True


def _layout_free_buffers(sch) -> set[str]:
    """Parameters the caller passes constants for (``AttachAttrLayoutFreeBuffers``)."""
    func = sch.mod["main"]
    indices = func.attrs.get("layout_free_buffers", []) if func.attrs else []
    return {func.params[int(i)].name for i in indices}


def _apply_layouts(sch, block, tile: Tile, producers) -> list[str]:
    """Apply the tile's layouts; returns the packed buffers (their blocks of ``groups × lanes``
    outputs are contiguous)."""
    var = sch.get(block).iter_vars[tile.vector_loop].var
    contiguous = []
    for name, how in tile.layouts:
        if how == PACK:
            contiguous.append(_pack(sch, block, name, var, tile.lanes))
        else:
            _relayout(sch, block, name, var, producers)
    return contiguous


def _pack(sch, block, name: str, var, lanes_: int) -> str:
    """Read the constant ``name`` in a layout whose ``var`` dimension is split into
    ``(outer, …, lanes)``: outer first, lanes innermost, so that every block of outputs reads
    one contiguous panel (OHWI convolution weights → ``[O/16, H, W, I, 16]``, dense weights
    ``[in, out]`` → ``[out/16, in, 16]``). The copy is marked as a layout rewrite:
    ``SplitLayoutRewritePreproc`` moves it out of the kernel and ``FoldConstant`` runs it once,
    at compile time. Returns the packed buffer's name."""
    index, d = _read_dim(sch, block, name, var)
    copy = sch.cache_read(block, index, "global")
    sch.annotate(copy, "meta_schedule.layout_rewrite_preproc", True)
    ndim = len(sch.get(block).reads[index].region)

    def layout(*axes):
        return [axes[d] // lanes_, *axes[:d], *axes[d + 1 :], axes[d] % lanes_]

    written = sch.get(copy).writes[0].source.name
    position = _read_dim(sch, block, written, None)[0]
    sch.transform_layout(block, ("read", position), tirx.IndexMap.from_func(layout, ndim=ndim))
    return written


def _relayout(sch, block, name: str, var, producers) -> None:
    """Move the ``var`` dimension of the in-kernel intermediate ``name`` innermost, and iterate
    its producer in the new order so that it writes contiguously."""
    index, d = _read_dim(sch, block, name, var)
    ndim = len(sch.get(block).reads[index].region)
    sch.transform_layout(block, ("read", index), tirx.IndexMap.from_func(_last(d), ndim=ndim))
    producer = next(p for p in producers if sch.get(p).writes[0].source.name == name)
    loops = sch.get_loops(producer)
    if len(loops) == ndim:
        sch.reorder(*loops[:d], *loops[d + 1 :], loops[d])


def _last(d: int):
    def layout(*axes):
        return [*axes[:d], *axes[d + 1 :], axes[d]]

    return layout


def _read_dim(sch, block, name: str, var) -> tuple[int, int | None]:
    """(index among the block's reads, dimension ``var`` indexes) of buffer ``name``."""
    reads = sch.get(block).reads
    index = next(i for i, r in enumerate(reads) if r.source.name == name)
    if var is None:
        return index, None
    dims = [r.min for r in reads[index].region]
    return index, next(k for k, e in enumerate(dims) if var in expr_vars(e))


def _tile_reduction(
    sch, block, tile: Tile, spatial: int, width: int, per_tile=(), stream=None
) -> bool:
    """outer (parallel) × reduction × [rows (unrolled) × groups (unrolled) × lanes (vector)];
    the accumulator stays local, the epilogue runs on the tile as it is written back; the
    ``per_tile`` producers compute the window each tile reads, inside its loop; the tiles of a
    block of the packed weights ``stream`` prefetch the next block (see :mod:`.prefetch`).
    Returns whether they do."""
    loops = sch.get_loops(block)
    space, reduce = list(loops[:spatial]), list(loops[spatial:])
    v_outer, v_group, v_lane = sch.split(space[tile.vector_loop], [None, tile.groups, tile.lanes])
    outer = [v_outer if i == tile.vector_loop else space[i] for i in range(spatial)]
    inner = [v_group, v_lane]
    if tile.register_loop is not None:
        r_outer, r_inner = sch.split(space[tile.register_loop], [None, tile.rows])
        outer[tile.register_loop] = r_outer
        inner.insert(0, r_inner)
    if tile.blocks_outermost:
        outer.insert(0, outer.pop(tile.vector_loop))
    sch.reorder(*outer, *reduce, *inner)
    marked = stream is not None and bool(reduce)
    if marked:
        reduce, marked = _prefetch_next_block(sch, block, stream, outer, reduce)
    accumulator = sch.cache_write(block, 0, "local")
    unflatten_write(sch, block)
    ndim = len(sch.get(block).writes[0].region)
    if tile.vector_loop != spatial - 1 and ndim == spatial:  # its vectors contiguous too
        sch.transform_layout(
            block, ("write", 0), tirx.IndexMap.from_func(_last(tile.vector_loop), ndim=spatial)
        )
    epilogue = inline_epilogue(sch, accumulator)
    rest = downstream(sch, epilogue)  # a broadcast (a gate over a feature map) and after it
    sch.reverse_compute_at(epilogue, outer[-1], preserve_unit_loops=True)
    for producer in per_tile:  # before the outer loops are fused: a tile's region is then known
        sch.compute_at(producer, outer[-1], preserve_unit_loops=True)
    # loop annotations need a complete reduction block: before the split into init and update
    sch.parallel(sch.fuse(*outer))
    for loop in inner[:-1]:
        sch.unroll(loop)
    sch.vectorize(inner[-1])
    init = sch.decompose_reduction(block, reduce[0] if reduce else inner[0])
    for b in (init, epilogue):
        vectorize_tile(sch, sch.get_loops(b)[1:], width)
    for b in rest:
        schedule_injective_block(sch, b, width)
    return marked


def _prefetch_next_block(sch, block, stream: str, outer: list, reduce: list) -> tuple[list, bool]:
    """Mark the reduction for :mod:`.prefetch` (the parallel loop runs ``blocks × tiles``
    iterations, blocks outermost, each block of ``stream`` contiguous): ``(reduction loops,
    marked)``. Only blocks that several tiles reuse from L2 and that fit there: a block read
    once (a matrix-vector product) is a sequential stream the hardware prefetcher follows, and
    fetching a block ahead that the cache cannot keep only reads it twice (AlexNet's
    9216 → 4096 layer at batch 1: 7.7 ms without, 11.9 ms with, ONNX Runtime 6.8)."""
    blocks = const_int(sch.get(outer[0]).extent)
    tiles = math.prod(const_int(sch.get(loop).extent) or 0 for loop in outer[1:])
    weights = next(r.source for r in sch.get(block).reads if r.source.name == stream)
    total = math.prod(const_int(d) or 0 for d in weights.shape)
    if not blocks or tiles < 2 or not total or total % blocks:
        return reduce, False
    if total // blocks * weights.dtype.bits // 8 > CACHE_BYTES:
        return reduce, False
    return prefetch.annotate(sch, reduce, stream, tiles, total // blocks), True


# ---------------------------------------------------------------------------- injective


class RowReductionRule(ScheduleRule):
    """Reductions along rows with injective steps between them (softmax, LayerNorm) → one
    parallel loop over the rows, reductions as vector partials (:mod:`.rows`); a kernel with
    one reduction and no such steps is :class:`ReductionRule`'s."""

    def apply(self, func, target, tunable):
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return schedule_rows(func, lanes(target))
        except DECLINED:
            return None


class InjectiveRule(_CPURule):
    """Only spatial blocks: inline what can be, vectorise and parallelise what remains."""

    def schedule(self, sch, target) -> bool:
        simplify_indices(sch)
        infos = [get_sblock_info(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if not infos or any(i.dom_kind().strip("S") for i in infos):
            return False
        for info in try_inline(sch, infos):
            schedule_injective_block(sch, info.block_rv, lanes(target))
        return True
