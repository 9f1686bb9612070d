"""A live display of MetaSchedule tuning: tasks, trials measured, best latency so far."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graphopt.compiler.tune.default_records import mean_secs


class TuningProgress:
    """Counts measured trials per task; draws a rich progress bar when enabled."""

    def __init__(self, task_names: list[str], budget: int, *, enabled: bool = True) -> None:
        self.task_names = task_names
        self.budget = budget
        self.best = [math.inf] * len(task_names)
        self.trials = 0
        self.failed = 0
        self._progress = (
            Progress(
                TextColumn("tuning {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            if enabled
            else None
        )
        self._bar = None

    def __enter__(self) -> TuningProgress:
        if self._progress is not None:
            self._progress.start()
            self._bar = self._progress.add_task(self._describe(None), total=self.budget)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def record(self, task_id: int, seconds: list[float | None]) -> None:
        """Take one batch of measurements (``None`` for a failed candidate)."""
        self.trials += len(seconds)
        self.failed += sum(s is None for s in seconds)
        ok = [s for s in seconds if s is not None]
        if ok:
            self.best[task_id] = min(self.best[task_id], min(ok))
        if self._progress is not None:
            self._progress.update(
                self._bar, completed=self.trials, description=self._describe(task_id)
            )

    def _describe(self, task_id: int | None) -> str:
        done = [b for b in self.best if b < math.inf]
        where = (
            f"[{task_id + 1}/{len(self.task_names)}] {self.task_names[task_id]}"
            if task_id is not None
            else ""
        )
        best = f" · best of {len(done)} tuned tasks: {sum(done) * 1e3:.2f} ms" if done else ""
        return f"{where}{best}"

    def callback(self):
        """A MetaSchedule measure callback that feeds :meth:`record`."""
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        progress = self

        @derived_object
        class _Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
                seconds = []
                for built, ran in zip(builder_results, runner_results, strict=True):
                    ok = built.error_msg is None and ran.error_msg is None and ran.run_secs
                    seconds.append(mean_secs(ran) if ok else None)
                progress.record(int(task_id), seconds)

        return _Callback()
