"""Tuning starts from graphopt's default schedules: each task's default tile and a few
alternatives (the next register shapes, the other order of the outer loops) are measured like
MetaSchedule candidates and stored as records, so the cache's best record for a task is never
slower than the best default (and a task tuned in an older session gets its defaults compared
once). The alternatives are what a short budget buys first: the tile model's ranking, checked
by measurement on this machine.
"""

from __future__ import annotations

from typing import Any

TAG = "graphopt.default_schedule"  # root-block annotation marking a default-schedule record


def baseline_records(
    tasks, constants: dict[str, set[int]], cache, tvm_target, builder, runner, variants: int = 1
) -> list:
    """Measured default-schedule records, ``variants`` tiles per task (the default and its
    alternatives), for the tasks whose default the cache lacks, built and run by the tuning's
    own ``builder`` and ``runner``."""
    todo: list[tuple[Any, Any]] = []
    for task in tasks:
        if not _has_baseline(cache, task.dispatched[0]):
            todo += [
                (task, sch) for sch in variant_schedules(task, constants, tvm_target, variants)
            ]
    return measure(todo, tvm_target, builder, runner)


def measure(pairs, tvm_target, builder, runner) -> list:
    """Tuning records of ``(task, schedule)`` pairs, built and run like MetaSchedule's
    candidates; a schedule that fails to build or run is left out."""
    import tvm.s_tir.meta_schedule as ms

    if not pairs:
        return []
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, sch in pairs])
    records = []
    inputs, kept = [], []
    for (task, sch), result in zip(pairs, built, strict=True):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))
            kept.append((task, sch, args))
    for (task, sch, args), future in zip(kept, runner.run(inputs), strict=True):
        outcome = future.result()
        if outcome.error_msg is None:
            workload = ms.database.Workload(task.dispatched[0])
            records.append(
                ms.database.TuningRecord(sch.trace, workload, outcome.run_secs, tvm_target, args)
            )
    return records


def variant_schedules(task, constants, tvm_target, count: int) -> list:
    """Schedules of the task's distinct default tiles, each tagged with its variant."""
    from graphopt.compiler.tir.schedules import schedule_kernel, tile_description

    func = task.dispatched[0]["main"]
    found, seen = [], set()
    for variant in range(count):
        scheduled = schedule_kernel(func, tvm_target, constants.get(task.task_name, set()), variant)
        if scheduled is None:
            continue
        sch = scheduled[0]
        key = tile_description(sch.mod["main"])
        if variant and key in seen:
            continue  # the same tile as an earlier variant (e.g. one loop order fits all)
        seen.add(key)
        sch.annotate(sch.get_sblock("root"), TAG, variant)
        found.append(sch)
    return found


def _has_baseline(cache, mod) -> bool:
    return any(is_default(r) for r in _records(cache, mod))


def _records(cache, mod) -> list:
    """The cache's records of workload ``mod``, fastest first (none if it is unknown)."""
    if not cache.has_workload(mod):
        return []
    workload = cache.commit_workload(mod)  # present already: returns it, writes nothing
    return list(cache.get_top_k(workload, 1 << 10))


def recheck_winners(tasks, cache, tvm_target, builder, runner) -> list:
    """Fresh records of each task whose fastest record is not a default schedule: that record
    and the best default, measured again back to back. Noise only ever slows a measurement, so
    a default measured once while the machine was busy could otherwise lose for good to a
    slower schedule (seen: a ResNet-56 kernel tuned beside a test run, 0.23 ms instead of the
    default's 0.017); with both re-measured, the faster of the two wins from then on."""
    from tvm import s_tir

    pairs = []
    for task in tasks:
        mod = task.dispatched[0]
        top = _records(cache, mod)
        default = next((r for r in top if is_default(r)), None)
        if default is None or is_default(top[0]):
            continue
        for record in (top[0], default):
            sch = s_tir.Schedule(mod)
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # TVM's schedule errors: a record this TVM cannot replay
                break
            pairs.append((task, sch))
    return measure(pairs, tvm_target, builder, runner)


# A record must beat the model's own tile (variant 0) by this much to replace it: two cold
# measurements of one kernel differ by a few percent here, and a kernel 2 % faster alone ran
# 13 % slower in its network (ResNet-18's 512-channel residual convolution, another register
# shape: 4.14 vs 3.66 ms over a run of the model's calls)
TIE_MARGIN = 0.05


def applied_records(cache, tasks, margin: float = TIE_MARGIN):
    """An in-memory database with the one record to apply per task: the cache's fastest,
    unless the task's default tile measured within ``margin`` of it (then the default)."""
    import tvm.s_tir.meta_schedule as ms

    chosen = ms.database.MemoryDatabase()
    for task in tasks:
        mod = task.dispatched[0]
        top = _records(cache, mod)
        if top:
            pick = prefer_default(top, margin)
            workload = chosen.commit_workload(mod)
            chosen.commit_tuning_record(
                ms.database.TuningRecord(
                    pick.trace, workload, pick.run_secs, pick.target, pick.args_info
                )
            )
    return chosen


def prefer_default(top: list, margin: float = TIE_MARGIN):
    """Of records sorted fastest first: the first, or the default tile (variant 0) when the
    first is not ``margin`` faster than it."""
    default = next((r for r in top if variant_of(r) == 0), None)
    if default is None or top[0] is default:
        return top[0]
    return top[0] if mean_secs(top[0]) < mean_secs(default) * (1 - margin) else default


def is_default(record) -> bool:
    """Whether a record measured one of graphopt's default schedules."""
    return variant_of(record) is not None


def variant_of(record) -> int | None:
    """The default-schedule variant a record measured (None for other schedules)."""
    for inst in record.trace.insts:
        if inst.kind.name == "Annotate" and tuple(inst.attrs) == (TAG,):
            return int(inst.inputs[1])
    return None


def mean_secs(record) -> float:
    """Mean run time of a tuning record or a runner result (inf when it has none)."""
    secs = [float(s) for s in record.run_secs or []]
    return sum(secs) / len(secs) if secs else float("inf")
