"""TVM's thread pool is sized to the host's physical cores, not TVM's half-of-logical guess."""

from __future__ import annotations

import os

import pytest

from graphopt.compiler.targets import physical_cores, resolve_target
from graphopt.compiler.threads import (
    ENV,
    default_threads,
    pool_threads,
    threads_for_children,
    use_threads,
)

pytest.importorskip("tvm")


def threads_user():
    from graphopt.compiler import threads

    return threads.USER_CHOICE


@pytest.fixture
def restore_env():
    previous = os.environ.get(ENV)
    yield
    if previous is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = previous
    use_threads(default_threads())


def test_importing_graphopt_reserves_every_cpu():
    if threads_user():
        pytest.skip(f"{ENV} was set by the user: graphopt keeps it")
    assert os.environ[ENV] == str(os.cpu_count())


def test_use_threads_sizes_the_pool_both_ways(restore_env):
    assert use_threads(1) == 1 == pool_threads()
    # physical cores can exceed TVM's own default (half the logical CPUs on x86)
    assert use_threads(physical_cores()) == physical_cores() == pool_threads()


def test_default_is_the_users_setting_else_physical_cores(monkeypatch):
    from graphopt.compiler import threads

    monkeypatch.setattr(threads, "USER_CHOICE", None)
    assert default_threads() == physical_cores()
    monkeypatch.setattr(threads, "USER_CHOICE", "3")
    assert default_threads() == 3
    monkeypatch.setattr(threads, "USER_CHOICE", "not a number")
    assert default_threads() == physical_cores()


def test_children_see_the_size_and_the_env_is_restored(restore_env, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with threads_for_children(5):
        assert os.environ[ENV] == "5"
    assert ENV not in os.environ


def test_tuning_measures_on_the_targets_cores(restore_env, monkeypatch):
    from graphopt.compiler.tune.candidates import measuring_threads

    monkeypatch.delenv(ENV, raising=False)
    target = resolve_target({"kind": "llvm", "num-cores": 3})
    with measuring_threads(target):
        assert os.environ[ENV] == "3"
    assert ENV not in os.environ


def test_an_artifact_runs_on_physical_cores_by_default(
    tiny, tiny_artifact, restore_env, monkeypatch
):
    from graphopt.compiler import load, threads

    monkeypatch.setattr(threads, "USER_CHOICE", None)
    use_threads(1)
    model, x = tiny
    fresh = load(tiny_artifact.save(tiny_artifact.directory))
    fresh(x.numpy())
    assert pool_threads() == physical_cores()
    pinned = load(tiny_artifact.directory, threads=1)
    pinned(x.numpy())
    assert pool_threads() == 1
