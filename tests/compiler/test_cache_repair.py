"""A torn write (half a line at the end of the tuning database) costs that line, not the cache:
the next compile, trials=0 included, drops it with a warning and uses the rest."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt.compiler import Tuning
from graphopt.compiler.tune.cache_repair import (
    RECORDS,
    WORKLOADS,
    CacheRepairWarning,
    repair_database,
)
from tests.compiler.test_tuning import FEW, mlp


def _database(tmp_path):
    (directory,) = [p for p in tmp_path.iterdir() if (p / RECORDS).is_file()]
    return directory


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_a_torn_record_line_is_dropped_and_the_cache_still_applies(tmp_path):
    model, x = mlp(), torch.randn(1, 16)
    tuning = Tuning(cache_dir=tmp_path, **FEW)
    first = graphopt.compile(model, x, tuning=tuning).manifest.tuning
    records = _database(tmp_path) / RECORDS
    whole = records.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    records.write_bytes(whole + last[: len(last) // 2])  # a kill in the middle of a write
    with pytest.warns(CacheRepairWarning, match="dropped 1 unreadable line"):
        artifact = graphopt.compile(model, x, tuning=Tuning(cache_dir=tmp_path, trials=0, **FEW))
    assert artifact.manifest.tuning.tasks_from_cache == first.tasks
    assert records.read_bytes() == whole
    with torch.no_grad():
        assert torch.allclose(artifact(x), model(x), atol=1e-4)


def test_records_of_a_dropped_workload_go_with_it(tmp_path):
    (tmp_path / WORKLOADS).write_text('["1", "abc"]\n["2", "de')
    (tmp_path / RECORDS).write_text("[0, []]\n[1, []]\n[7, []]\nnot json\n")
    with pytest.warns(CacheRepairWarning):
        assert repair_database(tmp_path) == 4
    assert (tmp_path / WORKLOADS).read_text() == '["1", "abc"]\n'
    assert (tmp_path / RECORDS).read_text() == "[0, []]\n"
    assert repair_database(tmp_path) == 0  # a sound database is left alone
