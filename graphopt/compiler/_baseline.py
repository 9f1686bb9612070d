"""Tuning starts from graphopt's default schedules: each task's default is measured like a
MetaSchedule candidate and stored as a record, so the cache's best record for a task is never
slower than the default (and a task tuned in an older session gets its default compared once).
"""

from __future__ import annotations

from typing import Any

TAG = "graphopt.default_schedule"  # root-block annotation marking a default-schedule record


def baseline_records(
    tasks, constants: dict[str, set[int]], cache, tvm_target, builder, runner
) -> list:
    """Measured default-schedule records for the tasks whose default the cache lacks, built and
    run by the tuning's own ``builder`` and ``runner``."""
    import tvm.s_tir.meta_schedule as ms

    from graphopt.compiler.schedules import schedule_kernel

    todo: list[tuple[Any, Any]] = []
    for task in tasks:
        if _has_baseline(cache, task.dispatched[0]):
            continue
        func = task.dispatched[0]["main"]
        scheduled = schedule_kernel(func, tvm_target, constants.get(task.task_name, set()))
        if scheduled is not None:
            sch = scheduled[0]
            sch.annotate(sch.get_sblock("root"), TAG, 1)
            todo.append((task, sch))
    if not todo:
        return []
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, sch in todo])
    records = []
    inputs, kept = [], []
    for (task, sch), result in zip(todo, built, strict=True):
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


def _has_baseline(cache, mod) -> bool:
    if not cache.has_workload(mod):
        return False
    workload = cache.commit_workload(mod)  # present already: returns it, writes nothing
    return any(TAG in str(r.trace) for r in cache.get_top_k(workload, 1 << 10))
