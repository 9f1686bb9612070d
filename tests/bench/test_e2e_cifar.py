"""A tiny run of bench/e2e_cifar.py (a few images, two distillation steps, untuned compiles),
so the end-to-end benchmark cannot rot between its full runs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA

NEEDED = [
    SHARED_DATA / "cifar10" / "test_uint8.npz",
    SHARED_DATA / "cifar10" / "train20k_uint8.npz",
    SHARED_DATA / "cifar10_resnet" / "resnet56-4bfd9763.th",
]
pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(
        not all(p.exists() for p in NEEDED), reason=f"needs the shared CIFAR-10 files {NEEDED}"
    ),
]


@pytest.mark.slow  # ~2 min on 2 cores (compress, recover, compile, time): run by `make bench`
def test_the_end_to_end_benchmark_runs_in_miniature(tmp_path):
    pytest.importorskip("torch_pruning", reason="Torch-Pruning is the side-by-side baseline")
    from bench import e2e_cifar

    cfg = e2e_cifar.Config(
        ratios=(2.0,),
        methods=("graphopt pruning", "torch-pruning"),
        test_limit=300,
        calibration=64,
        validation=32,
        steps=2,
        tp_steps=100,
        batch_size=32,
        tuning=None,
        rounds=2,
        scratch=tmp_path / "scratch",
        out=tmp_path / "results",
        progress=False,
    )
    e2e_cifar.main(["--stage", "accuracy"], cfg)
    results = e2e_cifar.main(["--stage", "latency"], cfg)

    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"graphopt pruning", "torch-pruning"}
    for row in rows.values():
        assert 1.8 < row["macs_ratio"] < 2.3, row["macs_ratio"]
        assert list(row["top1"]) == list(e2e_cifar.STAGES)
        assert row["artifact_max_abs_error"] < 1e-3
        assert all(v > 0 for v in row["latency_ms"].values())
    top1 = rows["graphopt pruning"]["top1"]
    assert top1["+ BN recalibration"] > top1["one-shot"] + 10  # 53.8 → 85.9 in the full run
    written = json.loads((cfg.out / "e2e_cifar.json").read_text())
    assert written["rows"] == json.loads(json.dumps(results["rows"]))
    assert (cfg.out / "e2e_cifar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| graphopt pruning | 2× |" in (cfg.out / "e2e_cifar.md").read_text()
