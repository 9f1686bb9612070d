"""time_interleaved: every contender runs in every round, in an order that rotates; bursts drop
the first call of a turn."""

from __future__ import annotations

from graphopt.compiler.measure.benchmark import time_interleaved


def test_rounds_warmup_and_bursts_are_counted():
    calls = {"a": 0, "b": 0}
    contenders = {k: (lambda _k=k: calls.__setitem__(_k, calls[_k] + 1)) for k in calls}
    single = time_interleaved(contenders, rounds=4, warmup=2)
    assert calls == {"a": 6, "b": 6} and single["a"].rounds == 4
    burst = time_interleaved(contenders, rounds=4, warmup=0, burst=3)
    assert calls == {"a": 18, "b": 18} and burst["b"].rounds == 4 * 2
    assert burst["a"].p10_ms <= burst["a"].median_ms <= burst["a"].p90_ms


def test_discarded_calls_are_the_first_of_each_turn_and_never_all():
    import time

    import pytest

    calls = []

    def slow_then_fast():
        calls.append(None)
        time.sleep(0.02 if len(calls) % 4 == 1 else 0.0)  # the first of each turn of 4 is slow

    timing = time_interleaved({"a": slow_then_fast}, rounds=3, warmup=0, burst=4, discard=1)
    assert timing["a"].rounds == 3 * 3 and timing["a"].p90_ms < 10
    with pytest.raises(ValueError, match="discard"):
        time_interleaved({"a": slow_then_fast}, rounds=1, burst=4, discard=4)


def test_the_order_of_turns_rotates_so_each_contender_follows_every_other():
    order = []
    contenders = {k: (lambda _k=k: order.append(_k)) for k in "abc"}
    time_interleaved(contenders, rounds=3, warmup=0)
    assert order == list("abc" + "bca" + "cab")
    follows = {(x, y) for x, y in zip(order, order[1:], strict=False) if x != y}
    assert follows >= {("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")}


def test_each_turn_warms_up_until_the_previous_runtimes_interference_has_passed():
    import time

    last_a = [0.0]

    def a():
        last_a[0] = time.perf_counter()

    def b():  # slow while a's (simulated) spinning workers still hold the cores
        time.sleep(0.004 if time.perf_counter() - last_a[0] < 0.03 else 0.0)

    cold = time_interleaved({"a": a, "b": b}, rounds=4, warmup=0, burst=2, discard=0)
    warm = time_interleaved({"a": a, "b": b}, rounds=4, warmup=0, burst=2, discard=0, warm_s=0.05)
    assert cold["b"].median_ms >= 3.5 and warm["b"].p90_ms < 1.0
