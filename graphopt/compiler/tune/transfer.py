"""Tuning starts from what the cache knows about similar workloads.

A pruned or low-rank model brings kernels the cache has never seen, but it has usually seen the
same kernel with other channel counts (the unpruned model, a sibling at another ratio). Their
best MetaSchedule records are replayed on the new kernel: every tile-size decision
(``SamplePerfectTile``) is refitted to the new loop extent, keeping the inner factors (the
register and vector tile, what made the record fast) and growing or shrinking the outer one;
the other decisions (unroll depth, compute locations) are kept. A replay TVM rejects is
dropped. The transferred schedules are measured like the default ones and seed MetaSchedule's
search, which then evolves from them instead of from random samples.

Two workloads are *similar* when their blocks carry the same names and iteration kinds (the
same operator and fused epilogue); the nearest (by the log-ratio of their loop extents) go first.
"""

from __future__ import annotations

import math
from typing import Any

from graphopt.compiler.tune.default_records import is_default, mean_secs

MARK = "graphopt.transferred"  # root-block annotation: the record was transferred


def transferred_schedules(tasks, cache, per_task: int) -> list[tuple[Any, Any]]:
    """``(task, schedule)`` pairs: up to ``per_task`` schedules for each task, adapted from the
    best MetaSchedule record of each of its nearest similar workloads in ``cache``."""
    if per_task <= 0:
        return []
    known = _tuned_workloads(cache)
    pairs = []
    for task in tasks:
        mod = task.dispatched[0]
        key, extents = signature(mod)
        near = sorted(
            (_distance(extents, other_extents), i)
            for i, (other_key, other_extents, _) in enumerate(known)
            if other_key == key and other_extents != extents
        )
        for _, i in near[:per_task]:
            sch = adapt(known[i][2].trace, mod)
            if sch is not None:
                sch.annotate(sch.get_sblock("root"), MARK, 1)
                pairs.append((task, sch))
    return pairs


def signature(mod) -> tuple[tuple, tuple[int, ...]]:
    """``(key, extents)``: the blocks' names and iteration kinds, and their loop extents."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(mod)
    key, extents = [], []
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        block = sch.get(rv)
        kinds = "".join(
            "R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in block.iter_vars
        )
        key.append((block.name_hint, kinds))
        extents += [_int(iv.dom.extent) for iv in block.iter_vars]
    return tuple(key), tuple(extents)


def adapt(trace, mod):
    """``trace`` replayed on ``mod`` with its tile sizes refitted (None when TVM rejects it)."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)

    def decide(inst, inputs, _attrs, decision):
        if inst.kind.name != "SamplePerfectTile" or decision is None:
            return decision
        extent = _int(sch.get(inputs[0]).extent)
        return refit([int(d) for d in decision], extent) if extent > 0 else decision

    try:
        trace.apply_to_schedule(sch, remove_postproc=False, decision_provider=decide)
    except Exception:  # TVM's schedule errors (C++ exceptions of several types): not adaptable
        return None
    return sch


def refit(factors: list[int], extent: int) -> list[int]:
    """Factors of ``extent`` shaped like ``factors`` (whose product was another extent): from
    the innermost out, each becomes the largest divisor of what remains not above it; the
    outermost takes the rest. ``refit([1, 4, 2, 16], 48) == [1, 3, 1, 16]``."""
    inner, rest = [], extent
    for f in reversed(factors[1:]):
        d = max(d for d in range(1, min(f, rest) + 1) if rest % d == 0)
        inner.append(d)
        rest //= d
    return [rest, *reversed(inner)]


def _tuned_workloads(cache) -> list[tuple[tuple, tuple[int, ...], Any]]:
    """``(key, extents, best MetaSchedule record)`` of every workload the cache has tuned."""
    from tvm_ffi import structural_hash

    best: dict[Any, Any] = {}
    for record in cache.get_all_tuning_records():
        if is_default(record) or MARK in str(record.trace) or not record.run_secs:
            continue  # graphopt's own defaults, re-derived for every task; transfers of transfers
        workload = record.workload
        seconds = mean_secs(record)
        hashed = structural_hash(workload.mod)
        if hashed not in best or seconds < best[hashed][0]:
            best[hashed] = (seconds, workload, record)
    found = []
    for _, workload, record in best.values():
        key, extents = signature(workload.mod)
        found.append((key, extents, record))
    return found


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in zip(a, b, strict=True))


def _int(expr) -> int:
    value = getattr(expr, "value", expr)
    return int(value) if isinstance(value, int) else -1
