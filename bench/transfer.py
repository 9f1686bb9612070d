"""Tuning a pruned model from its original's records (``Tuning.transfer``) against tuning it
from the default schedules alone, with the same budget.

CIFAR ResNet-56 is tuned into a cache (2 trials per task); the model pruned to 1/ratio of its
MACs (graphopt channel pruning, L1, round-to 8, as in bench/e2e_cifar.py) is then tuned twice
from copies of that cache, with ``transfer=2`` and ``transfer=0``, and the two artifacts, the
untuned one and ONNX Runtime are timed in one interleaved run (batch 1, 2 threads).

    python bench/transfer.py [--ratio 2.0] [--per-task 2]
    python bench/transfer.py --time-only   # re-time from the caches a previous run left

The artifacts are compiled from the caches (``trials=0``) for timing, after all tuning is done.

Writes bench/results/transfer.{json,md}; caches under bench/scratch/transfer/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "bench" / "scratch" / "transfer"
THREADS = 2


def pruned(ratio: float):
    import graphopt
    from bench.e2e_cifar import STREAM, base_model, deployable
    from graphopt.passes import ChannelPruning

    original, example = base_model()
    prune = ChannelPruning(ratio=1 - 1 / ratio, importance="l1", exclude=STREAM, round_to=8)
    model = graphopt.optimize(original, example, [prune]).model
    return deployable(original, example), deployable(model, example), example


def tuned(model, example, cache: Path, per_task: int, transfer: int) -> tuple[object, dict]:
    import graphopt
    from graphopt.compiler import Tuning

    tuning = Tuning(cache_dir=cache, per_task=per_task, transfer=transfer, progress=False)
    start = time.perf_counter()
    artifact = graphopt.compile(model, example, "llvm", tuning=tuning)
    summary = artifact.manifest.tuning.model_dump(mode="json")
    return artifact, {**summary, "wall_s": time.perf_counter() - start}


def tune(model, original, example, per_task: int) -> dict:
    """Tune the original, then the pruned model from two copies of its cache."""
    shutil.rmtree(SCRATCH, ignore_errors=True)
    base = SCRATCH / "original-cache"
    _, original_summary = tuned(original, example, base, per_task, transfer=0)
    runs = {"original": original_summary}
    for label, transfer in LABELS.items():
        cache = SCRATCH / f"cache-{transfer}"
        shutil.copytree(base, cache)
        runs[label] = tuned(model, example, cache, per_task, transfer)[1]
        print(label, json.dumps(runs[label]), flush=True)
    (SCRATCH / "runs.json").write_text(json.dumps(runs, indent=2))
    return runs


LABELS = {"transfer 2": 2, "transfer 0": 0}


def main() -> None:
    import graphopt
    from bench.compile import BURST, DISCARD, ort_session
    from graphopt.compiler import Tuning
    from graphopt.compiler.measure.benchmark import time_interleaved

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--per-task", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--time-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    original, model, example = pruned(args.ratio)
    if args.time_only:
        runs = json.loads((SCRATCH / "runs.json").read_text())
    else:
        runs = tune(model, original, example, args.per_task)
    artifacts = {}
    for label, transfer in LABELS.items():
        cached = Tuning(trials=0, cache_dir=SCRATCH / f"cache-{transfer}", progress=False)
        artifacts[f"tuned, {label}"] = graphopt.compile(model, example, "llvm", tuning=cached)
    artifacts["untuned"] = graphopt.compile(model, example, "llvm", tuning=None)
    artifacts["untuned"].save(SCRATCH / "untuned")
    session, name = ort_session(SCRATCH / "untuned" / "model.onnx")
    x = example.numpy()
    contenders = {"onnxruntime": lambda: session.run(None, {name: x})}
    contenders.update({k: (lambda a=a: a(x)) for k, a in artifacts.items()})
    with torch.no_grad():
        want = model(example).numpy()
    errors = {k: float(np.abs(a(x) - want).max()) for k, a in artifacts.items()}
    timings = time_interleaved(contenders, rounds=args.rounds, burst=BURST, discard=DISCARD)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "ratio": args.ratio,
        "per_task": args.per_task,
        "tuning": runs,
        "latency": {k: t.model_dump() for k, t in timings.items()},
        "max_abs_error": errors,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "transfer.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    ort = result["latency"]["onnxruntime"]["median_ms"]
    lines = [
        f"# Tuning a pruned model from its original's records ({result['date']})",
        "",
        f"CIFAR ResNet-56 pruned to 1/{result['ratio']:g} of its MACs; the original tuned first "
        f"({result['per_task']} trials per task) into the cache both runs start from. "
        "Batch 1, 2 threads, one interleaved timing run of turns of 20 calls, the first 5 not "
        "counted (`python bench/transfer.py`; artifacts compiled from the caches after tuning).",
        "",
        "| run | tasks tuned | transferred | trials | tuning s | median ms | p10-p90 | vs ORT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in ("transfer 2", "transfer 0"):
        run, t = result["tuning"][label], result["latency"][f"tuned, {label}"]
        lines.append(
            f"| tuned, {label} | {run['tasks_tuned']} | {run['transferred']} | {run['trials']} "
            f"| {run['seconds']:.0f} | {t['median_ms']:.3f} | {t['p10_ms']:.3f}-{t['p90_ms']:.3f}"
            f" | {t['median_ms'] / ort:.2f}x |"
        )
    for label in ("untuned", "onnxruntime"):
        t = result["latency"][label]
        lines.append(
            f"| {label} | | | | | {t['median_ms']:.3f} | {t['p10_ms']:.3f}-{t['p90_ms']:.3f} "
            f"| {t['median_ms'] / ort:.2f}x |"
        )
    lines += ["", f"Max abs error vs PyTorch: {json.dumps(result['max_abs_error'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
