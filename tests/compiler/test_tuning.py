"""MetaSchedule tuning: the cache is reused (no new records), shared safely between processes,
and candidates can be measured through an RPC tracker. Tiny workloads, a few trials each."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import graphopt
from graphopt.compiler import RPC, Tuning
from graphopt.compiler.targets import resolve_target
from graphopt.compiler.tune.progress import TuningProgress
from graphopt.compiler.tune.tuning import target_cache_dir

FEW = {"per_task": 2, "per_iter": 2, "progress": False, "default_variants": 2}


def mlp(n_in: int = 16, n_out: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU()).eval()


def record_lines(cache_root: Path) -> list[dict]:
    db = target_cache_dir(cache_root, resolve_target("llvm"))
    text = (db / "database_tuning_record.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_second_compile_reuses_the_cache(tmp_path):
    model, x = mlp(), torch.randn(1, 16)
    tuning = Tuning(cache_dir=tmp_path, **FEW)
    first = graphopt.compile(model, x, tuning=tuning).manifest.tuning
    assert first.tasks >= 1 and first.tasks_from_cache == 0
    assert first.trials > 0 and first.new_records == first.trials
    assert first.tasks_applied == first.tasks
    # every task's default schedules were measured too, once, and stored beside the tuned ones
    assert first.defaults_measured >= first.tasks
    records = len(record_lines(tmp_path))
    assert records == (
        first.new_records + first.defaults_measured + first.transferred + first.rechecked
    )

    artifact = graphopt.compile(model, x, tuning=tuning)
    second = artifact.manifest.tuning
    assert second.tasks_from_cache == second.tasks == first.tasks
    assert (second.trials, second.new_records, second.tasks_tuned) == (0, 0, 0)
    assert second.defaults_measured == 0
    assert len(record_lines(tmp_path)) == records  # nothing was re-tuned
    with torch.no_grad():
        assert torch.allclose(artifact(x), model(x), atol=1e-4)

    # another model sharing the first layer's workload tunes only what is new
    torch.manual_seed(1)
    bigger = nn.Sequential(*mlp(), nn.Linear(8, 3)).eval()
    third = graphopt.compile(bigger, x, tuning=tuning).manifest.tuning
    assert third.tasks > first.tasks
    assert third.tasks_from_cache >= 1 and third.tasks_tuned == third.tasks - third.tasks_from_cache


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_tuning_measures_the_default_tile_and_its_alternatives(tmp_path):
    from graphopt.compiler.tune.default_records import TAG

    torch.manual_seed(0)
    model, x = (
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()).eval(),
        torch.randn(1, 16, 14, 14),
    )
    tuning = Tuning(cache_dir=tmp_path, default_variants=4, per_task=1, per_iter=1, progress=False)
    summary = graphopt.compile(model, x, tuning=tuning).manifest.tuning
    defaults = [r for r in record_lines(tmp_path) if TAG in json.dumps(r)]
    traces = {json.dumps(trace) for _, (trace, *_) in defaults}
    # distinct schedules, not one measured four times
    assert len(traces) == summary.defaults_measured > summary.tasks
    # a default is stored again where a searched record beat it and both were re-measured
    assert (
        summary.defaults_measured
        <= len(defaults)
        <= (summary.defaults_measured + summary.rechecked)
    )
    single = Tuning(cache_dir=tmp_path / "one", default_variants=1, per_task=1, progress=False)
    assert graphopt.compile(model, x, tuning=single).manifest.tuning.defaults_measured == (
        summary.tasks
    )


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_a_pruned_sibling_starts_from_the_records_of_the_original(tmp_path):
    """The cache knows a 16→32 convolution; a compile of its 16→24 sibling replays that record
    refitted, measures it, stores it (marked) and still computes the sibling's numbers."""
    from graphopt.compiler.tune.transfer import MARK

    def conv(cout):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(16, cout, 3, padding=1), nn.ReLU()).eval()

    x = torch.randn(1, 16, 8, 8)
    tuning = Tuning(cache_dir=tmp_path, per_task=1, per_iter=1, default_variants=1, progress=False)
    original = graphopt.compile(conv(32), x, tuning=tuning).manifest.tuning
    assert original.transferred == 0  # an empty cache knows nothing similar
    sibling = conv(24)
    artifact = graphopt.compile(sibling, x, tuning=tuning)
    summary = artifact.manifest.tuning
    assert summary.transferred >= 1
    marked = [r for r in record_lines(tmp_path) if MARK in json.dumps(r)]
    # each transfer once, plus again where one won and was re-measured beside the default
    assert summary.transferred <= len(marked) <= summary.transferred + summary.rechecked
    with torch.no_grad():
        assert torch.allclose(artifact(x), sibling(x), atol=1e-4)


def test_trials_zero_applies_the_cache_without_tuning(tmp_path):
    model, x = mlp(12, 6), torch.randn(1, 12)
    summary = graphopt.compile(model, x, tuning=Tuning(trials=0, cache_dir=tmp_path)).manifest
    assert summary.tuning.trials == 0 and summary.tuning.tasks_applied == 0


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_records_of_an_older_records_version_are_neither_applied_nor_deleted(tmp_path, monkeypatch):
    from graphopt.compiler.tune import tuning as tuning_module

    model, x = mlp(12, 6), torch.randn(1, 12)
    few = Tuning(cache_dir=tmp_path, per_task=1, per_iter=1, default_variants=1, progress=False)
    old = graphopt.compile(model, x, tuning=few).manifest.tuning
    assert old.tasks_applied == old.tasks > 0
    monkeypatch.setattr(tuning_module, "RECORDS_VERSION", tuning_module.RECORDS_VERSION + 1)
    new = graphopt.compile(model, x, tuning=Tuning(trials=0, cache_dir=tmp_path)).manifest.tuning
    assert new.tasks_applied == 0 and new.cache_dir != old.cache_dir
    assert (Path(old.cache_dir) / "database_tuning_record.json").stat().st_size > 0


@pytest.mark.slow  # 1.5-5 min of MetaSchedule tuning on 2 cores: run by `make bench`
def test_two_processes_tuning_into_one_cache_do_not_corrupt_it(tmp_path):
    script = textwrap.dedent("""
        import sys, torch, graphopt
        from graphopt.compiler import Tuning
        from tests.compiler.test_tuning import FEW, mlp
        n = int(sys.argv[1])
        artifact = graphopt.compile(mlp(n, n // 2), torch.randn(1, n),
                                    tuning=Tuning(cache_dir=sys.argv[2], **FEW))
        summary = artifact.manifest.tuning
        print(summary.new_records + summary.defaults_measured + summary.transferred
              + summary.rechecked)
    """)
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n), str(tmp_path)],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (16, 20)
    ]
    merged = [int(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(m > 0 for m in merged)
    assert len(record_lines(tmp_path)) == sum(merged)  # every line parses, none lost
    for n in (16, 20):  # each process's workloads are now known to a third
        again = graphopt.compile(
            mlp(n, n // 2), torch.randn(1, n), tuning=Tuning(cache_dir=tmp_path, **FEW)
        )
        assert again.manifest.tuning.trials == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker and one CPU server registered with it, on 127.0.0.1 only."""
    from tvm import rpc

    tracker_port, server_port = _free_port(), _free_port()
    common = [sys.executable, "-m"]
    tracker = subprocess.Popen(
        [
            *common,
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(tracker_port),
            "--port-end",
            str(tracker_port + 1),
        ]
    )
    server = subprocess.Popen(
        [
            *common,
            "tvm.exec.rpc_server",
            "--tracker",
            f"127.0.0.1:{tracker_port}",
            "--key",
            "graphopt-test",
            "--host",
            "127.0.0.1",
            "--port",
            str(server_port),
            "--port-end",
            str(server_port + 1),
        ]
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
                if summary["queue_info"].get("graphopt-test", {}).get("free"):
                    break
            except Exception:  # not up yet
                pass
            if time.time() > deadline:
                pytest.fail("RPC tracker/server did not come up within 120 s")
            time.sleep(0.5)
        yield f"127.0.0.1:{tracker_port}"
    finally:
        for p in (server, tracker):
            p.terminate()
            p.wait(timeout=30)


def test_tuning_through_an_rpc_tracker(rpc_tracker, tmp_path):
    model, x = mlp(10, 4), torch.randn(1, 10)
    tuning = Tuning(cache_dir=tmp_path, rpc=RPC(tracker=rpc_tracker, key="graphopt-test"), **FEW)
    artifact = graphopt.compile(model, x, tuning=tuning)
    summary = artifact.manifest.tuning
    assert summary.remote == f"{rpc_tracker}/graphopt-test"
    assert summary.trials > 0 and summary.new_records > 0
    assert all(r[1][1] for r in record_lines(tmp_path))  # every record has measured run times
    with torch.no_grad():
        assert torch.allclose(artifact(x), model(x), atol=1e-4)


def test_rpc_config_is_validated():
    with pytest.raises(ValueError):
        RPC(tracker="no-port", key="k")
    assert RPC(tracker="10.0.0.2:9190", key="rk3588").host_port == ("10.0.0.2", 9190)


def test_untunable_target_says_how_to_tune_it(tmp_path):
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 gcc")
    artifact = graphopt.compile(mlp(), torch.randn(1, 16), "aarch64", Tuning(cache_dir=tmp_path))
    summary = artifact.manifest.tuning
    assert summary.trials == 0 and "rpc" in summary.notes[0].lower()


def test_progress_counts_trials_and_best_latency():
    progress = TuningProgress(["a", "b"], budget=4, enabled=False)
    progress.record(0, [2e-3, None])
    progress.record(1, [1e-3, 5e-4])
    assert (progress.trials, progress.failed) == (4, 1)
    assert progress.best == [2e-3, 5e-4]


def _record(ms_mean: float, variant: int | None):
    """A stand-in tuning record: its run times and (for a default) the variant annotation."""
    from types import SimpleNamespace as NS

    from graphopt.compiler.tune.default_records import TAG

    kind = NS(name="Annotate" if variant is not None else "Split")
    insts = [NS(kind=kind, attrs=[TAG], inputs=[None, variant])]
    return NS(trace=NS(insts=insts), run_secs=[ms_mean / 1e3] * 3)


@pytest.mark.parametrize(
    "best_ms,expected",
    [(0.98, "default"), (0.96, "default"), (0.94, "best"), (0.61, "best")],
)
def test_the_default_tile_wins_ties_within_the_noise_margin(best_ms, expected):
    from graphopt.compiler.tune.default_records import prefer_default

    best, other, default = _record(best_ms, 2), _record(0.99, None), _record(1.0, 0)
    top = [best, other, default]  # fastest first, as the cache returns them
    assert prefer_default(top) is (default if expected == "default" else best)
    assert prefer_default([default, best]) is default  # already the fastest
    assert prefer_default([best, other]) is best  # no default measured: the fastest
