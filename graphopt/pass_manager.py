"""The pass manager: runs passes in order and verifies the graph after each one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from torch import fx

from graphopt.analysis.cost import model_stats
from graphopt.errors import ConfigError
from graphopt.pass_base import Pass, PassContext
from graphopt.report import PassReport
from graphopt.verify import EXACT_TOLERANCE, verify_pass_output


class PassObserver(Protocol):
    """Told when each pass starts and ends (the CLI draws its progress display from this)."""

    def pass_started(self, index: int, total: int, pass_: Pass) -> None: ...

    def pass_finished(self, index: int, total: int, report: PassReport) -> None: ...


def check_order(passes: Sequence[Pass]) -> None:
    """Every pass's ``requires`` appear earlier in ``passes``; otherwise one ConfigError."""
    problems, seen = [], set()
    for index, pass_ in enumerate(passes):
        missing = [r.name for r in pass_.requires if r.name not in seen]
        if missing:
            problems.append(f"passes[{index}] ({pass_.name}) requires {missing} before it")
        seen.add(pass_.name)
    if problems:
        raise ConfigError("invalid pass order:\n  " + "\n  ".join(problems))


class PassManager:
    """Runs passes in the given order; after each one lints, re-propagates shapes, executes
    the graph on the example inputs and, for exact passes, compares outputs."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        tolerance: float = EXACT_TOLERANCE,
        observer: PassObserver | None = None,
    ) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise ConfigError(f"expected Pass instances, got {type(p).__name__}: {p!r}")
        check_order(passes)
        self.passes = tuple(passes)
        self.tolerance = tolerance
        self.observer = observer

    def run(
        self, gm: fx.GraphModule, ctx: PassContext, reference: object
    ) -> tuple[fx.GraphModule, list[PassReport]]:
        """Apply every pass to ``gm`` (unchanged itself); ``reference`` is ``gm``'s output."""
        reports = []
        if ctx.original is None:
            ctx = replace(ctx, original=gm)
        for index, pass_ in enumerate(self.passes):
            if self.observer:
                self.observer.pass_started(index, len(self.passes), pass_)
            gm, reference, report = self._run_one(pass_, gm, ctx, reference)
            ctx = ctx.after(pass_.name)
            reports.append(report)
            if self.observer:
                self.observer.pass_finished(index, len(self.passes), report)
        return gm, reports

    def _run_one(self, pass_: Pass, gm: fx.GraphModule, ctx: PassContext, reference: object):
        before_stats = model_stats(gm)
        start = time.perf_counter()
        result = pass_(gm, ctx)
        seconds = time.perf_counter() - start
        after = result.graph
        reference, verification = verify_pass_output(
            pass_.name, pass_.is_exact(), gm, after, ctx.example_inputs, reference, self.tolerance
        )
        report = result.report.model_copy(
            update={
                "before": before_stats,
                "after": model_stats(after),
                "verification": verification,
                "seconds": seconds,
            }
        )
        return after, reference, report
