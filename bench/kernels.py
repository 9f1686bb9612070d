"""Kernel report of resnet18, mobilenet_v2 and CIFAR ResNet-56 (BN folded) against the GEMM peak.

For each model: every fused kernel's share of run time and GFLOP/s, with graphopt's default
schedules (no cache) and with the schedules bench/compile.py tuned for it (its cache for
``--per-task``, default 2; nothing is tuned here: run bench/compile.py first, else that
section is left out). The peak is a 2048² float32
GEMM through PyTorch on 2 threads, measured in the same run.

    python bench/kernels.py [--models resnet18 ...]

Writes bench/results/kernels.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def folded(name: str):
    import graphopt
    from bench.compile import build_model
    from graphopt.passes import FoldBatchNorm

    model, x = build_model(name)
    return graphopt.optimize(model, x, [FoldBatchNorm()]).model, x


def direct_conv_flop(gm, x) -> float:
    """FLOPs of the model's convolutions computed directly (2 per multiply-add, graphopt's own
    MAC count)."""
    from graphopt.analysis.cost import node_macs
    from graphopt.analysis.shapes import propagate_shapes

    propagate_shapes(gm, (x,))
    convs = [
        node
        for node in gm.graph.nodes
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)
    ]
    return 2.0 * sum(node_macs(gm, node) for node in convs)


def main() -> None:
    from bench.compile import tuning_cache
    from graphopt.compiler import Tuning
    from graphopt.compiler.measure.kernels import kernel_report, measure_gemm_peak

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "resnet18", "mobilenet_v2"])
    parser.add_argument("--per-task", type=int, default=2, help="bench/compile.py's budget")
    args = parser.parse_args()
    torch.set_num_threads(2)
    peak = measure_gemm_peak(threads=2)
    results = {"peak_gflops": peak, "models": {}}
    lines = ["# Kernel report (bench/kernels.py)", "", f"Measured peak: {peak:.1f} GFLOP/s.", ""]
    for name in args.models:
        model, x = folded(name)
        builds = [("default schedules", None)]
        cache = tuning_cache(name, args.per_task)
        if cache.is_dir():
            label = f"tuned {args.per_task}/task (bench/compile.py's cache)"
            builds.append((label, Tuning(trials=0, cache_dir=cache, progress=False)))
        for label, tuning in builds:
            report = kernel_report(model, x, tuning=tuning, peak_gflops=peak)
            convs = [k for k in report.kernels if "conv2d" in k.name]
            conv_time = sum(k.calls * k.ms for k in convs)
            conv_rate = sum(k.calls * k.gflop for k in convs) / conv_time * 1e3 if convs else 0.0
            # every convolution layer, direct or Winograd, at the direct convolution's FLOPs
            layers_ms = conv_time + sum(k.calls * k.ms for k in report.kernels if k.winograd)
            layers_rate = direct_conv_flop(model, x) / layers_ms / 1e6
            results["models"].setdefault(name, {})[label] = {
                **report.model_dump(mode="json"),
                "conv_gflops": conv_rate,
                "conv_peak_fraction": conv_rate / peak,
                "conv_layers_effective_gflops": layers_rate,
            }
            lines += [
                f"## {name}, {label}",
                "",
                f"Direct conv kernels together: {conv_rate:.1f} GFLOP/s = "
                f"{100 * conv_rate / peak:.0f} % of peak. All convolution layers (direct kernels "
                f"and the three kernels of each Winograd convolution) together: {layers_ms:.3f} "
                f"ms, {layers_rate:.1f} GFLOP/s counted as direct convolutions = "
                f"{100 * layers_rate / peak:.0f} % of peak.",
                "",
                report.table(),
                "",
            ]
            print(lines[-3], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernels.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "kernels.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
