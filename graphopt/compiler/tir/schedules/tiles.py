"""How a reduction kernel is tiled: pure decisions from shapes and access patterns.

A tile is ``rows × groups × lanes`` outputs kept in vector registers while the reduction runs
around it. The *vector loop* gives ``groups × lanes`` consecutive outputs (``lanes`` one machine
vector); every operand that depends on it must be read contiguously along it, either as it is
(``direct``), after a compile-time repack of a constant (``pack``: weights) or after the
in-kernel producer writes it in another order (``relayout``: the padded input). The *register
loop* gives ``rows`` outputs whose operand values come in as broadcast scalars and reuse each
vector load (output channels of a convolution, rows of a matmul).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DIRECT, PACK, RELAYOUT = "direct", "pack", "relayout"
# Among vector loops with equally full vectors: packed weights (measured best: a vector of
# output channels is contiguous whatever the stride or width), then direct, then relayout.
_PREFERENCE = {PACK: 2, DIRECT: 1, RELAYOUT: 0}
_GOOD_LANES = 8
# A vector load of the packed operand (weights: a tile streams them from L2) costs this many
# broadcasts of the other (a few input rows, hot in L1): measured on ResNet-18, 3 made the
# 14×14 layers 1.4-1.6× faster than 1 and nothing slower; 6 gained nothing more.
VECTOR_LOAD_COST = 3.0
# Weights smaller than this stay in a core's cache whatever the loop order (1 MiB: half an
# L2 of current x86 server cores; measured: ordering by size alone made ResNet-56 and
# MobileNetV2 slower, with weights of 150-600 KB)
CACHE_BYTES = 1 << 20
FALLBACK_LANES = 4  # 128-bit vectors when LLVM cannot describe the target
VARIANT_SHAPES = 3  # register shapes tuning tries per kernel (times two loop orders)


@dataclass(frozen=True)
class Tile:
    """The register tile of one reduction block (loop indices count its spatial loops)."""

    vector_loop: int
    lanes: int
    groups: int
    register_loop: int | None
    rows: int
    layouts: tuple[tuple[str, str], ...] = field(default=())  # (buffer name, PACK | RELAYOUT)
    blocks_outermost: bool = False  # the vector loop's blocks outside the other output loops
    register_reads_vectors: bool = False  # rows read vectors, not broadcasts (depthwise)


def lanes(target) -> int:
    """float32 lanes of the target's widest vector register, from the CPU's features: 16 with
    AVX-512, 8 with AVX/AVX2, 4 with SSE or NEON. (TVM's ``llvm_get_vector_width`` answers 512
    for AVX2-only CPUs such as ``znver3``: tiles sized from it took two registers per vector.)"""
    for feature, count in _VECTOR_FEATURES:
        if _has(feature, target):
            return count
    return FALLBACK_LANES


# (LLVM feature, float32 lanes), widest first; the first the target has sets the lanes.
_VECTOR_FEATURES = (("avx512f", 16), ("avx", 8), ("sse2", 4), ("neon", 4))


def _has(feature: str, target) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # a target LLVM cannot describe
        return False


def registers(target) -> int:
    """Vector accumulators a tile may use: 3/4 of the register file (32 with AVX-512 and NEON,
    16 with AVX2); the rest holds loaded operands."""
    wide = _has("avx512f", target)
    arm = "aarch64" in str(target.attrs.get("mtriple", ""))
    return 24 if wide or arm else 12


def vector_lanes(extent: int, width: int) -> int:
    """The largest power of two ≤ ``width`` that divides ``extent`` (1 when it is odd)."""
    result = 1
    while result * 2 <= width and extent % (result * 2) == 0:
        result *= 2
    return result


def register_shape(
    groups_max: int, rows_max: int, budget: int, *, broadcast: bool = True
) -> tuple[int, int]:
    """(groups, rows), divisors of their extents within ``budget`` accumulators, with the most
    multiply-adds per unit of load cost, then the larger tile. With ``broadcast`` each row
    reads a broadcast scalar and each group a vector: ``g·r / (c·g + r)``, ``c`` =
    :data:`VECTOR_LOAD_COST`; without, each row and group reads a vector and each group
    one shared vector more: ``g·r / (g·r + g)``."""
    return register_shapes(groups_max, rows_max, budget, broadcast=broadcast)[0]


def register_shapes(
    groups_max: int, rows_max: int, budget: int, *, broadcast: bool = True
) -> list[tuple[int, int]]:
    """Every fitting (groups, rows), best first (see :func:`register_shape`)."""
    shapes = []
    for g in _divisors(groups_max, budget):
        for r in _divisors(rows_max, budget // g):
            shapes.append(((shape_score(g, r, broadcast), g * r), (g, r)))
    shapes.sort(key=lambda item: item[0], reverse=True)
    return [shape for _, shape in shapes] or [(1, 1)]


def shape_score(groups: int, rows: int, broadcast: bool = True) -> float:
    """Multiply-adds per unit of load cost of a ``groups × rows`` tile (see
    :func:`register_shape`)."""
    cost = VECTOR_LOAD_COST * groups + rows if broadcast else groups * rows + groups
    return groups * rows / cost


def _divisors(n: int, most: int) -> list[int]:
    """The divisors of ``n`` up to ``most``."""
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


def choose_tile(
    block, extents, width: int, budget: int, constants, intermediates, variant: int = 0
) -> Tile | None:
    """The tile of ``block`` (an SBlock whose first ``len(extents)`` iter vars are spatial);
    ``variant`` > 0: an alternative for tuning to measure (None when there are fewer).

    ``constants`` and ``intermediates`` name the buffers that may be packed (weights the caller
    passes as constants) and relaid out (written by a producer block of the same kernel).
    """
    index_vars = [iv.var for iv in block.iter_vars][: len(extents)]
    written = {w.source.name for w in block.writes}
    reads = [r for r in block.reads if r.source.name not in written]
    candidates = [i for i, e in enumerate(extents) if e > 1]
    if not candidates:
        return Tile(len(extents) - 1, 1, 1, None, 1) if variant == 0 else None
    v, layouts = _vector_loop(
        candidates, extents, index_vars, reads, width, constants, intermediates
    )
    lanes_ = vector_lanes(extents[v], width)
    vector_reads = [_vars_in(r) for r in reads if index_vars[v] in _vars_in(r)]
    free = [i for i in candidates if i != v and not any(index_vars[i] in u for u in vector_reads)]
    if free:
        r = max(reversed(free), key=lambda i: extents[i])
        shapes = register_shapes(extents[v] // lanes_, extents[r], budget)
    else:
        r = _reuse_loop(candidates, v, index_vars, vector_reads)
        rows_max = extents[r] if r is not None else 1
        shapes = register_shapes(extents[v] // lanes_, rows_max, budget, broadcast=False)
    output = set(index_vars)
    along = [_vars_in(read) & output == {index_vars[v]} for read in reads]  # the weights
    across = [index_vars[v] not in _vars_in(read) for read in reads]  # the activations
    outermost = _blocks_outermost(reads, along, across)
    choices = _variants(shapes, outermost)
    if variant >= len(choices):
        return None
    (groups, rows), outermost = choices[variant]
    return Tile(v, lanes_, groups, r, rows, tuple(layouts), outermost, not free and rows > 1)


def _variants(shapes, outermost: bool) -> list:
    """Variant 0 is the model's choice; tuning measures the others: the next register shapes,
    and the other order of the outer loops."""
    firsts = [(shape, outermost) for shape in shapes[:VARIANT_SHAPES]]
    flipped = [(shape, not outermost) for shape in shapes[:VARIANT_SHAPES]]
    return [firsts[0], flipped[0], *firsts[1:], *flipped[1:]]


def _blocks_outermost(reads, along: list[bool], across: list[bool]) -> bool:
    """Whether the vector loop's blocks go outermost: when the operands indexed by it alone
    (weights) outweigh those it does not index (activations) and overflow a cache. Each block
    of weights is then read once and reused over every output position, instead of all
    weights once per row of tiles (ResNet-18's 512-channel layers in NHWC: 2× faster)."""
    weights = sum(_elements(r.source) for r, hit in zip(reads, along, strict=True) if hit)
    activations = sum(_elements(r.source) for r, hit in zip(reads, across, strict=True) if hit)
    return weights > activations and 4 * weights > CACHE_BYTES


def _elements(buffer) -> int:
    n = 1
    for d in buffer.shape:
        n *= const_int(d) or 1
    return n


def _reuse_loop(candidates, v: int, index_vars, vector_reads) -> int | None:
    """Without a loop whose operands are broadcast scalars (depthwise convolutions: input and
    weights both follow the channels), rows along the innermost loop that one vector operand
    (the weights) does not follow: each weight vector is loaded once for all rows."""
    for i in reversed(candidates):
        if i != v and any(index_vars[i] not in used for used in vector_reads):
            return i
    return None


def _vector_loop(candidates, extents, index_vars, reads, width, constants, intermediates):
    """(loop, layouts): the loop whose operands can all be read contiguously with the fullest
    vectors; ties go by :data:`_PREFERENCE`, then to the inner loop. A relayout (a transposing
    producer) counts at most :data:`_GOOD_LANES` lanes: measured on MobileNetV2's depthwise
    convolutions, it beats direct 8-lane vectors only where those are narrower."""
    best, best_key = (candidates[-1], []), None
    for depth, i in enumerate(reversed(candidates)):
        plan = _plan(index_vars[i], extents[i], reads, constants, intermediates)
        if plan is None:
            continue
        kinds = [how for _, how in plan] or [DIRECT]
        lanes_ = vector_lanes(extents[i], width)
        if RELAYOUT in kinds:  # costs a transposing producer: only worth it below half vectors
            lanes_ = min(lanes_, _GOOD_LANES, width)
        key = (lanes_, min(_PREFERENCE[k] for k in kinds), -depth)
        if best_key is None or key > best_key:
            best, best_key = (i, [p for p in plan if p[1] != DIRECT]), key
    return best


def _plan(var, extent, reads, constants, intermediates) -> list[tuple[str, str]] | None:
    """How each read that depends on ``var`` becomes contiguous along it (None: one cannot)."""
    plan = []
    for region in reads:
        if var not in _vars_in(region):
            continue
        how = access(region, var, constants, intermediates, extent)
        if how is None:
            return None
        plan.append((region.source.name, how))
    return plan


def access(region, var, constants, intermediates, extent: int = 0) -> str | None:
    """PACK when ``var`` alone indexes one dimension of a constant that other loops index too
    (plainly, or offset by a multiple of ``extent``, the loop's own: ``g·opg + f`` for the
    channel ``f`` of group ``g``); else DIRECT when it indexes only the last dimension, with
    stride 1; RELAYOUT when it indexes one dimension of an in-kernel intermediate with stride 1;
    None otherwise."""
    from tvm.sym.pattern import detect_linear_equation

    dims = [r.min for r in region.region]
    hits = [k for k, d in enumerate(dims) if var in expr_vars(d)]
    if len(hits) != 1:
        return None
    coefficients = detect_linear_equation(dims[hits[0]], [var])
    if len(coefficients) != 2 or const_int(coefficients[0]) != 1:
        return None  # strided along var
    aligned = dims[hits[0]].same_as(var) or _multiple(coefficients[1], extent)
    constant = region.source.name in constants and aligned
    if hits[0] == len(dims) - 1:
        # a constant that other loops index too (dense weights [in, out]) is packed so that
        # each block of outputs is one contiguous panel, not a line per reduction step
        others = [d for k, d in enumerate(dims) if k != hits[0] and const_int(d) is None]
        return PACK if constant and others else DIRECT
    if constant:
        return PACK
    return RELAYOUT if region.source.name in intermediates else None


def _multiple(expr, n: int) -> bool:
    """Whether ``expr`` is provably a multiple of ``n`` (> 1)."""
    from tvm import tirx
    from tvm.sym import Analyzer

    return n > 1 and const_int(Analyzer().simplify(tirx.floormod(expr, n))) == 0


def _vars_in(region) -> set:
    used = set()
    for r in region.region:
        used |= expr_vars(r.min)
    return used


def expr_vars(expr) -> set:
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    return collect_vars_used_in_prim_expr(expr)


def const_int(expr) -> int | None:
    from tvm import tirx

    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return expr if isinstance(expr, int) else None
