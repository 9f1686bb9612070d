"""Latency measurement: warm-up, then interleaved rounds so that every contender sees the same
machine noise; the median and the 10th–90th percentile spread of each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Timing(BaseModel):
    """Latency of one contender over ``rounds`` calls."""

    model_config = ConfigDict(extra="forbid")

    median_ms: float = Field(ge=0)
    p10_ms: float = Field(ge=0)
    p90_ms: float = Field(ge=0)
    rounds: int = Field(ge=1)


def time_interleaved(
    contenders: dict[str, Callable[[], Any]],
    *,
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
    discard: int | None = None,
    settle_s: float = 0.0,
    warm_s: float = 0.0,
) -> dict[str, Timing]:
    """Time every contender ``rounds`` times, one turn of each per round, after ``warmup``.

    With ``burst`` > 1 a turn is ``burst`` calls in a row and the first is not recorded: the
    call right after another runtime's pays for that runtime's spinning worker threads
    (ONNX Runtime, TVM and OpenMP all spin after a call), which is not the contender's cost.
    ``discard`` (default 1 with bursts) leading calls of each turn are not recorded: on a
    machine with no core to spare, the previous runtime's threads can slow several calls
    (measured: ONNX Runtime's MobileNetV2 median 7.9 ms in turns of 5 calls, 3.4 ms alone).
    The order of the turns rotates from round to round, so that no contender always follows
    the same one (the e2e bench's contender right after ONNX Runtime had p90s of 1.5–2× its
    median, another one compiling the same code within 20 %).

    ``warm_s``: each turn first calls the contender, unrecorded, for this many seconds, so that
    what is recorded is its steady state: the previous runtime's workers have stopped spinning
    (after a PyTorch eager turn, ONNX Runtime's calls ran 2-3× slower for ~150 ms on a 2-core
    VM) and the contender's own are awake. ``settle_s`` seconds of sleep before each turn were
    the earlier answer to the spinning, and they are biased: while the process sleeps, a
    runtime's workers park, and one that synchronises its workers at every operator (ONNX
    Runtime) pays the wake-ups in the calls that follow (measured, MobileNetV2, 2 threads:
    ONNX Runtime 8.2 ms without the sleep, 13.6-19 ms with 20 ms of it, the TVM artifact 7.8 →
    6.0 ms). Prefer ``warm_s``.
    """
    skip = (1 if burst > 1 else 0) if discard is None else discard
    if skip >= burst:
        raise ValueError(f"discard ({skip}) must leave calls of each burst ({burst}) to record")
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for turn in range(rounds):
        shift = turn % len(order)  # each contender follows every other equally often
        for name, fn in order[shift:] + order[:shift]:
            if settle_s:
                time.sleep(settle_s)
            _run_for(fn, warm_s)
            for call in range(burst):
                start = time.perf_counter()
                fn()
                if call >= skip:
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summarise(values) for name, values in samples.items()}


def _run_for(fn: Callable[[], Any], seconds: float) -> None:
    """Call ``fn`` until ``seconds`` have passed (not at all for 0)."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()


def _summarise(values: list[float]) -> Timing:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return Timing(
        median_ms=statistics.median(ordered), p10_ms=pick(0.1), p90_ms=pick(0.9), rounds=len(values)
    )
