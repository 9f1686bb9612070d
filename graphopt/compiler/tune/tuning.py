"""MetaSchedule tuning with a shared, persistent cache.

``Tuning`` is the user's config. :func:`tune_and_apply` extracts the model's tuning tasks, skips
those the cache already has records for, tunes the rest in a private work directory (starting
from the cache's records of similar workloads, :mod:`.transfer`, and graphopt's default
schedules, :mod:`.default_records`), merges the new records into the cache under a file lock, and
applies the best known schedule of every task.
Two processes tuning into one cache never write it at the same time; a task both tuned simply
gets two records and the faster wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from graphopt.compiler.targets import ResolvedTarget
from graphopt.compiler.tune import candidates
from graphopt.compiler.tune.cache_repair import repair_database
from graphopt.compiler.tune.default_records import (
    applied_records,
    baseline_records,
    measure,
    recheck_winners,
)
from graphopt.compiler.tune.progress import TuningProgress
from graphopt.compiler.tune.transfer import transferred_schedules
from graphopt.errors import CompileError

_DB_FILES = ("database_workload.json", "database_tuning_record.json")
# Records measured by different default schedules or a different measuring method do not
# compare: a record timed warm, or a default that has since become faster, would still be
# applied as "the fastest known". Bump this when either changes; older databases are then
# left alone (not read, not deleted). 4: weight-streaming defaults prefetch the next weight
# block; 3: kernels built with graphopt's lowering (tile buffers
# on the stack); 2: channels-last defaults, folded BatchNorm, cold-cache timing with 10
# samples; 1: NCHW defaults, TVM's one warm sample.
RECORDS_VERSION = 4


class RPC(BaseModel):
    """Measure on a remote device through a TVM RPC tracker (boards, phones)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracker: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:\d+$")] = Field(
        description="Tracker address as host:port."
    )
    key: str = Field(min_length=1, description="Device key the RPC server registered with.")
    session_timeout: int = Field(default=60, ge=1, description="Seconds one measurement may take.")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        return host, int(port)


class Tuning(BaseModel):
    """How hard to tune, where the results persist, and where candidates are measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int | None = Field(
        default=None,
        ge=0,
        description="Total measured candidates; None = per_task × tasks still to tune; "
        "0 = tune nothing (records already in the cache are still applied).",
    )
    per_task: int = Field(default=8, ge=1, description="Most candidates measured for one task.")
    per_iter: int = Field(default=8, ge=1, description="Candidates measured per search round.")
    cache_dir: Path | None = Field(
        default=None,
        description="Tuning database directory (default: $GRAPHOPT_CACHE_DIR or "
        "~/.cache/graphopt/tuning). Shared by every model compiled for the same target.",
    )
    default_variants: int = Field(
        default=6,
        ge=1,
        le=6,
        description="graphopt default schedules measured per task before the search (CPU "
        "targets this host runs): the default tile and its alternatives (other register "
        "shapes, other loop order); the cache keeps the fastest.",
    )
    transfer: int = Field(
        default=2,
        ge=0,
        le=8,
        description="Records of similar workloads in the cache (the same kernel with other "
        "shapes, e.g. before pruning) replayed on each new task with their tile sizes refitted, "
        "measured, and given to the search as starting points (CPU targets this host runs); "
        "0 = start from the default schedules only.",
    )
    rpc: RPC | None = Field(default=None, description="Measure on a remote device.")
    progress: bool = Field(default=True, description="Show a live progress display.")
    seed: int = Field(default=0, description="Search seed.")

    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        if env := os.environ.get("GRAPHOPT_CACHE_DIR"):
            return Path(env).expanduser()
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "graphopt" / "tuning"


class TuningSummary(BaseModel):
    """What tuning did (recorded in the artifact's manifest)."""

    model_config = ConfigDict(extra="forbid")

    tasks: int = Field(ge=0, description="Tuning tasks (fused kernels) in the model.")
    tasks_from_cache: int = Field(ge=0, description="Tasks the cache already had records for.")
    tasks_tuned: int = Field(ge=0, description="Tasks tuned in this run.")
    trials: int = Field(ge=0, description="Candidates measured in this run.")
    new_records: int = Field(ge=0, description="Tuned records merged into the cache by this run.")
    defaults_measured: int = Field(
        default=0,
        ge=0,
        description="graphopt default schedules (default tiles and their alternatives) "
        "measured by this run and stored as records (the cache's best per task is then never "
        "slower than the best of them).",
    )
    transferred: int = Field(
        default=0,
        ge=0,
        description="Schedules of similar workloads replayed on this run's new tasks, measured "
        "and stored as records (the search started from them).",
    )
    rechecked: int = Field(
        default=0,
        ge=0,
        description="Records measured again: for each task whose fastest record was not a "
        "default schedule, that record and the best default, back to back (a noisy first "
        "measurement never decides for good).",
    )
    tasks_applied: int = Field(ge=0, description="Tasks compiled with a tuned schedule.")
    seconds: float = Field(ge=0, description="Wall time of task extraction, tuning and merging.")
    cache_dir: str = Field(description="Database directory used for this target.")
    remote: str | None = Field(default=None, description="RPC tracker and key, if remote.")
    notes: list[str] = Field(default_factory=list)


def target_cache_dir(root: Path, target: ResolvedTarget) -> Path:
    """One database per target and records version: records measured for one CPU never steer
    another, nor records measured against older default schedules or another method."""
    key = json.dumps(target.spec, sort_keys=True)
    if RECORDS_VERSION > 1:  # version 1 databases were keyed by the target alone
        key += f"/records-v{RECORDS_VERSION}"
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def tune_and_apply(mod, target: ResolvedTarget, tuning: Tuning):
    """Tune what the cache does not know, then apply the cache: ``(module, TuningSummary)``.

    On a CPU this host runs, a tuning run (budget > 0) first measures the schedules of
    similar workloads the cache knows, refitted to each new task (``Tuning.transfer``), and
    starts the search from them; it also measures graphopt's default schedule of every task
    the cache has no measurement of it for and stores it as a record: the cache then holds,
    per task, the fastest of the defaults, the transfers and MetaSchedule's best. A task won
    by a schedule other than a default gets both re-measured (:func:`recheck_winners`).
    """
    import tvm.s_tir.meta_schedule as ms
    from tvm import relax

    from graphopt.compiler.tir.schedules import constant_params

    start = time.perf_counter()
    run = _Run(target, tuning)
    tasks = ms.relax_integration.extract_tasks(mod, run.tvm_target)
    todo = [t for t in tasks if not run.known(t)]
    notes: list[str] = []
    local = tuning.trials != 0 and target.device == "cpu" and target.can_measure_locally
    transfers, records, trials, baselines, rechecked = [], [], 0, [], []
    if todo and local:
        pairs = transferred_schedules(todo, run.cache, tuning.transfer)
        transfers = run.measured(
            lambda: measure(pairs, run.tvm_target, run.builder, candidates.local_runner())
        )
    if todo and _budget(tuning, len(todo)) > 0:
        if tuning.rpc is None and not target.can_measure_locally:
            notes.append(
                f"{len(todo)} tasks left untuned: target {target.name} cannot be measured on "
                "this host; give Tuning(rpc=RPC(tracker=..., key=...)) to tune on a device"
            )
        else:
            records, trials = run.search(todo, transfers)
    if local:
        constants = constant_params(mod)
        variants = tuning.default_variants
        baselines = run.measured(
            lambda: baseline_records(
                tasks,
                constants,
                run.cache,
                run.tvm_target,
                run.builder,
                candidates.local_runner(),
                variants,
            )
        )
    if local and (trials or transfers):
        rechecked = run.measured(
            lambda: recheck_winners(
                todo, run.cache, run.tvm_target, run.builder, candidates.local_runner()
            )
        )
    applied = sum(run.known(t) for t in tasks)
    with run.tvm_target, applied_records(run.cache, tasks):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    summary = TuningSummary(
        tasks=len(tasks),
        tasks_from_cache=len(tasks) - len(todo),
        tasks_tuned=len(todo) if trials else 0,
        trials=trials,
        new_records=len(records),
        defaults_measured=len(baselines),
        transferred=len(transfers),
        rechecked=len(rechecked),
        tasks_applied=applied,
        seconds=time.perf_counter() - start,
        cache_dir=str(run.db_dir),
        remote=f"{tuning.rpc.tracker}/{tuning.rpc.key}" if tuning.rpc else None,
        notes=notes,
    )
    return mod, summary


class _Run:
    """One tuning run's cache: read whole into memory (queries and apply never touch the
    file), re-read whenever this run merges records into it."""

    def __init__(self, target: ResolvedTarget, tuning: Tuning) -> None:
        self.target, self.tuning = target, tuning
        self.tvm_target = target.tvm()
        self.db_dir = target_cache_dir(tuning.cache_root(), target)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.db_dir):
            self.cache = _open(self.db_dir)

    @cached_property
    def builder(self):
        """Built on first use: TVM's LocalBuilder starts a worker process to check itself
        (2.9 s here), which a compile that only applies the cache does not need."""
        return candidates.builder(self.tvm_target)

    def known(self, task) -> bool:
        return _known(self.cache, task, self.tvm_target)

    def measured(self, measure_records) -> list:
        """Records ``measure_records()`` measures on the target's threads, merged."""
        with candidates.measuring_threads(self.target):
            records = measure_records()
        if records:
            self.cache = _merge(self.db_dir, records)
        return records

    def search(self, todo, seeds) -> tuple[list, int]:
        """MetaSchedule's search over ``todo``, its records merged: ``(records, trials)``."""
        with candidates.measuring_threads(self.target):
            records, trials = _tune(todo, self.tvm_target, self.tuning, seeds)
        self.cache = _merge(self.db_dir, records)
        return records, trials


def _budget(tuning: Tuning, n_tasks: int) -> int:
    return tuning.per_task * n_tasks if tuning.trials is None else tuning.trials


def _tune(todo, tvm_target, tuning: Tuning, seeds=()) -> tuple[list[Any], int]:
    """MetaSchedule's search over ``todo``; its database starts with the ``seeds`` (measured
    records of these tasks), whose traces join the first population. Returns the new records."""
    import tvm.s_tir.meta_schedule as ms

    budget = _budget(tuning, len(todo))
    database = ms.database.MemoryDatabase()
    for seed in seeds:
        workload = database.commit_workload(seed.workload.mod)
        database.commit_tuning_record(
            ms.database.TuningRecord(
                seed.trace, workload, seed.run_secs, seed.target, seed.args_info
            )
        )
    seeded = {str(seed.trace) for seed in seeds}
    with tempfile.TemporaryDirectory(prefix="graphopt-tune-") as work, _quiet_tvm_logs():
        with candidates.intrinsics_for(tvm_target):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                todo, work, seed=tuning.seed
            )
        progress = TuningProgress([t.task_name for t in todo], budget, enabled=tuning.progress)
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), progress.callback()]
        try:
            with progress:
                db = ms.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work,
                    max_trials_global=budget,
                    max_trials_per_task=tuning.per_task,
                    num_trials_per_iter=min(tuning.per_iter, tuning.per_task),
                    builder=candidates.builder(tvm_target),
                    runner=candidates.runner(tuning.rpc),
                    database=database,
                    measure_callbacks=callbacks,
                )
        except Exception as exc:  # TVM raises its own error types from C++
            raise CompileError(f"MetaSchedule tuning failed: {exc}") from exc
        new = [r for r in db.get_all_tuning_records() if str(r.trace) not in seeded]
        return new, progress.trials


@contextlib.contextmanager
def _quiet_tvm_logs():
    """MetaSchedule logs every round to stdout; our progress display replaces that.

    MetaSchedule also rebuilds its logger from a dictConfig that names every handler already
    on it, and fails (``'NoneType' object has no attribute 'format'``) on unnamed ones, such as
    those pytest or an application attach; they are detached while TVM configures and tunes.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level, unnamed = logger.level, [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        for handler in unnamed:
            logger.addHandler(handler)


def _merge(db_dir: Path, records):
    """Append ``records`` to the cache database under the directory's lock; returns the
    database as re-read then (other processes' records included) with ours added."""
    import tvm.s_tir.meta_schedule as ms

    with _locked(db_dir):
        cache = _open(db_dir)
        for record in records:
            workload = cache.commit_workload(record.workload.mod)
            cache.commit_tuning_record(
                ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, record.target, record.args_info
                )
            )
    return cache


def _open(db_dir: Path):
    """The cache database, after dropping what a torn write left unreadable (lock held)."""
    import tvm.s_tir.meta_schedule as ms

    repair_database(db_dir)
    try:
        return ms.database.JSONDatabase(work_dir=str(db_dir))
    except Exception as exc:  # noqa: BLE001 - TVM raises untyped errors for bad files
        raise CompileError(
            f"tuning cache {db_dir} is unreadable ({type(exc).__name__}); delete the directory "
            "to start the cache afresh"
        ) from exc


def _known(cache, task, tvm_target) -> bool:
    mod = task.dispatched[0]
    return cache.query_tuning_record(mod, tvm_target, task.task_name) is not None


def _locked(db_dir: Path) -> FileLock:
    return FileLock(str(db_dir / ".lock"), timeout=3600)
