"""Which channels, how many per group: importance × scope, CIFAR ResNet-56 or -20, 2× fewer MACs.

Block-inner channels (the pad-coupled streams kept, as in bench/e2e_cifar.py), one-shot, then
+ BN recalibration, then + layer-wise reconstruction (BN → refit → BN), top-1 on the 10k test
images after each; 512 calibration images from train20k feed every data-aware step. No
training. Rows: magnitude (l1) against data-aware selection (`output_error`: the channels the
consumers' least-squares refit can best absorb), each with the global ranking, one fraction
per group, and per-group budgets from measured sensitivity; Taylor one-shot and re-scored.

    python bench/pruning_selection.py              # ResNet-56, ~25 min on 2 cores
    python bench/pruning_selection.py --depth 20   # ResNet-20, ~10 min

Writes bench/results/pruning_selection.{json,md} (ResNet-56) or
pruning_selection_resnet20.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("GRAPHOPT_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
STREAM = ["conv1", "layer*.conv2", "linear"]
ROWS = [
    ("l1", "global", 1),
    ("l1", "uniform", 1),
    ("l1", "sensitivity", 1),
    ("output_error", "global", 1),
    ("output_error", "uniform", 1),
    ("output_error", "sensitivity", 1),
    ("taylor", "global", 1),
    ("taylor", "global", 8),
]


def run(importance: str, scope: str, iterations: int, model, data) -> dict:
    import graphopt
    from graphopt.passes import BatchNormRecalibration, ChannelPruning, LayerwiseReconstruction
    from graphopt.testing.data import top1

    x, y = data["test"]
    calibration = data["calibration"]
    pruning = ChannelPruning(
        ratio=0.5, importance=importance, scope=scope, exclude=STREAM, iterations=iterations
    )
    start = time.perf_counter()
    result = graphopt.optimize(model, x[:1], [pruning], calibration_data=calibration)
    seconds = time.perf_counter() - start
    pruned = result.model
    bn = graphopt.optimize(pruned, x[:1], [BatchNormRecalibration()], calibration_data=calibration)
    recovery = [BatchNormRecalibration(), LayerwiseReconstruction(), BatchNormRecalibration()]
    rec = graphopt.optimize(pruned, x[:1], recovery, original=model, calibration_data=calibration)
    return {
        "importance": importance,
        "scope": scope,
        "iterations": iterations,
        "macs_reduction": result.report.passes[0].metrics["achieved_macs_reduction"],
        "seconds": seconds,
        "top1": {
            "one-shot": top1(pruned, x, y),
            "+ BN recalibration": top1(bn.model, x, y),
            "+ reconstruction": top1(rec.model, x, y),
        },
        "inner_widths": [
            m.out_channels
            for n, m in pruned.named_modules()
            if n.startswith("layer") and n.endswith("conv1")
        ],
    }


CHECKPOINTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


def load(depth: int):
    from graphopt.testing.data import batches, load_cifar10, top1
    from graphopt.testing.zoo import cifar_resnet

    model = cifar_resnet(depth, DATA / "cifar10_resnet" / CHECKPOINTS[depth]).eval()
    x, y = load_cifar10(DATA / "cifar10" / "test_uint8.npz")
    xc, yc = load_cifar10(DATA / "cifar10" / "train20k_uint8.npz", limit=512, seed=0)
    data = {"test": (x, y), "calibration": list(batches(xc, yc, 64))}
    return model, data, top1(model, x, y)


def write(rows: list[dict], baseline: float, out: Path, depth: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "pruning_selection" if depth == 56 else f"pruning_selection_resnet{depth}"
    (out / f"{stem}.json").write_text(
        json.dumps({"baseline_top1": baseline, "rows": rows}, indent=1)
    )
    lines = [
        f"# Channel selection × budget allocation: CIFAR-10 ResNet-{depth}, 2× fewer MACs "
        f"(bench/pruning_selection.py{'' if depth == 56 else f' --depth {depth}'})",
        "",
        f"Block-inner channels, no training; top-1 on the 10k test images (original {baseline:.2f} %). "
        "Calibration: 512 train20k images (8 batches of 64). Seconds: the pruning pass alone, "
        "2 threads, a shared machine.",
        "",
        "| importance | scope | iterations | MACs −% | one-shot | + BN | + reconstruction | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["top1"]
        lines.append(
            f"| {r['importance']} | {r['scope']} | {r['iterations']} | "
            f"{100 * r['macs_reduction']:.1f} | {t['one-shot']:.2f} | "
            f"{t['+ BN recalibration']:.2f} | {t['+ reconstruction']:.2f} | {r['seconds']:.0f} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=sorted(CHECKPOINTS), default=56)
    depth = parser.parse_args().depth
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, data, baseline = load(depth)
    rows = []
    for importance, scope, iterations in ROWS:
        rows.append(run(importance, scope, iterations, model, data))
        print(json.dumps(rows[-1]), flush=True)
        write(rows, baseline, RESULTS, depth)


if __name__ == "__main__":
    main()
