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
    median, another one compiling the same code within 20 %). ``settle_s`` seconds of sleep
    before each turn let the previous runtime's spinning threads go to sleep first: on 2 cores,
    a spinning ONNX Runtime worker sharing a core with a TVM worker held every call of a
    0.2 ms artifact's burst to a scheduler time slice (8-12 ms), in one run out of two.
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
            for call in range(burst):
                start = time.perf_counter()
                fn()
                if call >= skip:
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summarise(values) for name, values in samples.items()}


def _summarise(values: list[float]) -> Timing:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return Timing(
        median_ms=statistics.median(ordered), p10_ms=pick(0.1), p90_ms=pick(0.9), rounds=len(values)
    )
