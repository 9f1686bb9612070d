"""The pass manager: runs passes in order and verifies the graph after each one."""

from __future__ import annotations

import fnmatch
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from torch import fx

from graphopt.analysis.cost import model_stats
from graphopt.analysis.ties import parameter_ties
from graphopt.errors import ConfigError, VerificationError
from graphopt.pass_base import CALIBRATION, TRAINING, Pass, PassContext
from graphopt.report import PassReport
from graphopt.verify import EXACT_TOLERANCE, verify_pass_output


class SelectorWarning(UserWarning):
    """A pass's ``include``/``exclude`` pattern names no module: probably a typo."""


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


def check_data(passes: Sequence[Pass], calibration_data: object, training_data: object) -> None:
    """Every pass's data needs are met, checked before any pass runs; otherwise one ConfigError
    listing each pass and what it lacks."""
    given = {
        CALIBRATION: calibration_data is not None,
        TRAINING: training_data is not None or calibration_data is not None,
    }
    problems = [
        f"passes[{index}] ({pass_.name}) needs {need} (optimize(..., {need}=...); recipe: "
        f"data.{need.removesuffix('_data')})"
        for index, pass_ in enumerate(passes)
        for need in sorted(pass_.data_needs())
        if not given.get(need, False)
    ]
    if problems:
        raise ConfigError("missing data:\n  " + "\n  ".join(problems))


def unmatched_patterns(pass_: Pass, gm: fx.GraphModule) -> list[str]:
    """``include``/``exclude`` globs of ``pass_`` that name no module of ``gm``."""
    names = [name for name, _ in gm.named_modules() if name]
    return [
        pattern
        for pattern in (*pass_.include, *pass_.exclude)
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names)
    ]


def check_ties(pass_: Pass, before: fx.GraphModule, after: fx.GraphModule) -> None:
    """The parameters shared before the pass are shared after it (and no new ones), unless
    the pass declares ``changes_ties``; otherwise a VerificationError naming them."""
    if pass_.changes_ties:
        return
    old, new = set(parameter_ties(before)), set(parameter_ties(after))
    if old != new:
        lost = ", ".join(" = ".join(t) for t in sorted(old - new)) or "none"
        gained = ", ".join(" = ".join(t) for t in sorted(new - old)) or "none"
        raise VerificationError(
            pass_.name, f"parameter ties changed (untied: {lost}; newly tied: {gained})"
        )


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
        unmatched = unmatched_patterns(pass_, gm)
        for pattern in unmatched:
            warnings.warn(
                f"pass {pass_.name!r}: pattern {pattern!r} matches no module of the graph",
                SelectorWarning,
                stacklevel=4,
            )
        start = time.perf_counter()
        result = pass_(gm, ctx)
        seconds = time.perf_counter() - start
        after = result.graph
        check_ties(pass_, gm, after)
        reference, verification = verify_pass_output(
            pass_.name, pass_.is_exact(), gm, after, ctx.example_inputs, reference, self.tolerance
        )
        report = result.report.model_copy(
            update={
                "before": before_stats,
                "after": model_stats(after),
                "verification": verification,
                "seconds": seconds,
                "notes": [
                    *result.report.notes,
                    *(f"pattern {p!r} matches no module" for p in unmatched),
                ],
            }
        )
        return after, reference, report
