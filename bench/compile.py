"""Compile benchmark: batch-1 latency of PyTorch eager, ONNX Runtime and graphopt's TVM artifacts
(untuned: graphopt's default schedules; tuned at several trial budgets: MetaSchedule's best or the
default, whichever measured faster, per kernel) side by side in one run, plus tuning wall time and
recompile-from-cache time.

Models: torchvision resnet18 and mobilenet_v2 at 224×224 (random weights: latency does not
depend on them), CIFAR-10 ResNet-56 at 32×32. Every tuned budget starts from an empty cache of
its own, so its tuning time is honest. All artifacts are saved, loaded back with
``graphopt.load`` and timed in this process in interleaved rounds.

    python bench/compile.py                       # budgets of 2 and 8 trials per task
    python bench/compile.py --models resnet56 --per-task 4

Writes bench/results/compile.json and bench/results/compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "bench" / "scratch" / "compile"
DATA = ROOT.parent / "shared" / "data"
THREADS = 2
BURST = 20  # calls a turn; the first DISCARD are not recorded (another runtime's threads)
DISCARD = 5


def build_model(name: str):
    if name == "resnet56":
        from graphopt.testing.zoo import cifar_resnet

        weights = DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
        return cifar_resnet(56, weights if weights.exists() else None), torch.randn(1, 3, 32, 32)
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval(), torch.randn(1, 3, 224, 224)


def tuning_cache(name: str, per_task: int) -> Path:
    """The tuning database this benchmark fills for ``name`` at ``per_task`` trials a task."""
    return SCRATCH / f"{name}-cache-{per_task}"


def ort_session(onnx_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def run_model(name: str, budgets: list[int], rounds: int) -> dict:
    import graphopt
    from graphopt.compiler import Tuning

    model, x = build_model(name)
    row: dict = {"model": name, "input": list(x.shape), "builds": {}}
    artifacts = {}
    start = time.perf_counter()
    untuned = graphopt.compile(model, x, tuning=None)
    row["builds"]["graphopt untuned"] = {"compile_s": time.perf_counter() - start}
    artifacts["graphopt untuned"] = untuned
    for per_task in budgets:
        cache = tuning_cache(name, per_task)
        shutil.rmtree(cache, ignore_errors=True)
        tuning = Tuning(per_task=per_task, cache_dir=cache, progress=sys.stderr.isatty())
        start = time.perf_counter()
        tuned = graphopt.compile(model, x, tuning=tuning)
        wall = time.perf_counter() - start
        start = time.perf_counter()
        again = graphopt.compile(model, x, tuning=tuning.model_copy(update={"trials": 0}))
        recompile = time.perf_counter() - start
        label = f"graphopt tuned {per_task}/task"
        row["builds"][label] = {
            "compile_s": wall,
            "recompile_from_cache_s": recompile,
            "tuning": tuned.manifest.tuning.model_dump(),
            "recompile_new_records": again.manifest.tuning.new_records,
        }
        artifacts[label] = tuned
        print(f"{name} {label}: {wall:.0f} s, recompile {recompile:.1f} s", flush=True)
    for label, artifact in artifacts.items():
        artifact.save(artifact_dir(name, label))
    row["latency"] = time_model(name, list(artifacts), rounds)
    return row


def artifact_dir(name: str, label: str) -> Path:
    return SCRATCH / f"{name}-{label.replace(' ', '_').replace('/', '-')}"


def time_model(name: str, labels: list[str], rounds: int) -> dict:
    """Load the saved artifacts back and time them against eager and ONNX Runtime."""
    import graphopt
    from graphopt.compiler.measure.benchmark import time_interleaved

    model, x = build_model(name)
    # the weights the artifacts were compiled from (random for torchvision models)
    program = torch.export.load(str(artifact_dir(name, "graphopt untuned") / "model.pt2"))
    model.load_state_dict(program.module().state_dict())
    loaded = {label: graphopt.load(artifact_dir(name, label)) for label in labels}
    session, input_name = ort_session(loaded["graphopt untuned"].directory / "model.onnx")
    xn = x.numpy()
    with torch.no_grad():
        expected = model(x).numpy()
    contenders = {
        "pytorch eager": lambda: model(x),
        "onnxruntime": lambda: session.run(None, {input_name: xn}),
        **{label: (lambda a=a: a(xn)) for label, a in loaded.items()},
    }
    scale = float(np.abs(expected).max())  # errors relative to the largest output
    errors = {"onnxruntime": float(np.abs(session.run(None, {input_name: xn})[0] - expected).max())}
    errors.update({label: float(np.abs(a(xn) - expected).max()) for label, a in loaded.items()})
    errors = {label: e / scale for label, e in errors.items()}
    with torch.no_grad():
        # 5 calls a turn, the first not counted: the call right after another runtime pays for
        # that runtime's spinning threads (ONNX Runtime's especially)
        timings = time_interleaved(contenders, rounds=rounds, burst=BURST, discard=DISCARD)
    eager = timings["pytorch eager"].median_ms
    ort_ms = timings["onnxruntime"].median_ms
    return {
        label: {
            **t.model_dump(),
            "vs_eager": t.median_ms / eager,
            "vs_onnxruntime": t.median_ms / ort_ms,
            "max_rel_error": errors.get(label, 0.0),
        }
        for label, t in timings.items()
    }


def write_markdown(result: dict) -> str:
    lines = [
        "# Compile benchmark",
        "",
        f"Generated by `python bench/compile.py` on {result['date']} ({result['machine']}, "
        f"{THREADS} threads for every backend). Batch 1; median of {result['rounds']} interleaved "
        f"rounds of {BURST} calls a turn, the first {DISCARD} not counted (p10–p90 in brackets); "
        "ratios are against PyTorch eager and ONNX Runtime "
        "measured in the same rounds. Untuned: graphopt's default schedules. Each tuned budget "
        "started from an empty cache; its tuning time includes measuring the default schedules."
        + (
            " Latencies were re-measured with `--time-only` on a quiet machine after tuning."
            if result.get("timed_separately")
            else ""
        ),
        "",
    ]
    if result.get("note"):
        lines += [result["note"], ""]
    for row in result["models"]:
        lines += [
            f"## {row['model']} {tuple(row['input'])}",
            "",
            "| backend | median ms | × eager | × ONNX Runtime | max rel err |",
            "|---|---|---|---|---|",
        ]
        for label, t in row["latency"].items():
            lines.append(
                f"| {label} | {t['median_ms']:.2f} [{t['p10_ms']:.2f}–{t['p90_ms']:.2f}] | "
                f"{t['vs_eager']:.2f} | {t['vs_onnxruntime']:.2f} | {t['max_rel_error']:.1e} |"
            )
        lines += ["", "| build | compile s | tasks | trials | tuning s | recompile from cache s |"]
        lines.append("|---|---|---|---|---|---|")
        for label, b in row["builds"].items():
            tuning = b.get("tuning") or {}
            lines.append(
                f"| {label} | {b['compile_s']:.1f} | {tuning.get('tasks', '–')} | "
                f"{tuning.get('trials', '–')} | {tuning.get('seconds', 0):.0f} | "
                + (
                    f"{b['recompile_from_cache_s']:.1f} |"
                    if "recompile_from_cache_s" in b
                    else "– |"
                )
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "resnet18", "mobilenet_v2"])
    parser.add_argument("--per-task", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--time-only",
        action="store_true",
        help="Re-time the artifacts a previous run saved (for a quiet machine); keeps its builds.",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "rounds": args.rounds,
        "models": [],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.time_only:
        result = json.loads((RESULTS / "compile.json").read_text())
        result["rounds"], result["timed_separately"] = args.rounds, True
        for row in result["models"]:
            row["latency"] = time_model(row["model"], list(row["builds"]), args.rounds)
        (RESULTS / "compile.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "compile.md").write_text(write_markdown(result))
        print(write_markdown(result))
        return
    for name in args.models:  # results are written after each model: a long run keeps its rows
        result["models"].append(run_model(name, args.per_task, args.rounds))
        (RESULTS / "compile.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "compile.md").write_text(write_markdown(result))
    print(write_markdown(result))


if __name__ == "__main__":
    main()
