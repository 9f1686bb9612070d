"""Channel pruning benchmark: graphopt and Torch-Pruning side by side, in one run.

1. torchvision zoo, random weights, eval mode, 50 % of MACs requested, no per-model code:
   success, achieved MAC reduction and time to prune, each tool in its own subprocess with a
   timeout (a hang counts as a failure).
2. CIFAR-10 ResNet-56 (pretrained, ../shared/data): one-shot top-1 on the 10k test set at 2×
   fewer MACs for each importance criterion.
3. Capture + analysis + pruning time of resnet50.

    python bench/pruning.py            # everything (about 30–60 min on 2 cores)
    python bench/pruning.py --zoo-only / --cifar-only / --timing-only

Writes bench/results/pruning.json and bench/results/pruning.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data"
ZOO = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11_bn",
    "alexnet",
    "squeezenet1_0",
    "densenet121",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_y_400mf",
    "regnet_x_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "maxvit_t",
]
TIMEOUT_S = 300
TARGET = 0.5


def build(name: str):
    import torchvision

    kwargs = (
        {"aux_logits": False, "init_weights": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


# ---------------------------------------------------------------- one model, one tool


def run_graphopt(name: str) -> dict:
    import graphopt
    from graphopt.passes import ChannelPruning

    model, x = build(name)
    start = time.perf_counter()
    result = graphopt.optimize(model, x, [ChannelPruning(ratio=TARGET)])
    seconds = time.perf_counter() - start
    out = result.model(x)
    torch.export.export(result.model, (x,))
    report = result.report.passes[0]
    frozen = [d.target for d in report.declined if d.reason.startswith("frozen")]
    return {
        "ok": tuple(out.shape) == tuple(model(x).shape),
        "macs_reduction": 1 - result.report.after.macs / result.report.before.macs,
        "params_reduction": 1 - result.report.after.params / result.report.before.params,
        "seconds": seconds,
        "frozen_groups": len(frozen),
    }


def run_torch_pruning(name: str) -> dict:
    """Torch-Pruning as its README shows: MetaPruner, L1 group importance, global ranking, the
    classifier ignored, stepping the channel ratio until MACs reach the target."""
    import torch_pruning as tp
    from torch import nn

    model, x = build(name)
    base_macs, base_params = tp.utils.count_ops_and_params(model, x)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        global_pruning=True,
        pruning_ratio=0.9,
        iterative_steps=100,
        ignored_layers=ignored,
    )
    macs = base_macs
    for _ in range(100):
        pruner.step()
        macs, params = tp.utils.count_ops_and_params(model, x)
        if macs <= (1 - TARGET) * base_macs:
            break
    seconds = time.perf_counter() - start
    out = model(x)
    torch.export.export(model, (x,))
    return {
        "ok": tuple(out.shape) == (1, 1000),
        "macs_reduction": 1 - macs / base_macs,
        "params_reduction": 1 - params / base_params,
        "seconds": seconds,
    }


def isolated(tool: str, name: str) -> dict:
    """Run one tool on one model in a fresh process, with a timeout."""
    command = [sys.executable, __file__, "--one", tool, name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {TIMEOUT_S} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": tail[:300]}


def one(tool: str, name: str) -> None:
    torch.set_num_threads(2)
    runner = run_graphopt if tool == "graphopt" else run_torch_pruning
    print("RESULT " + json.dumps(runner(name)), flush=True)


def zoo() -> list[dict]:
    rows = []
    for name in ZOO:
        row = {
            "model": name,
            "graphopt": isolated("graphopt", name),
            "torch_pruning": isolated("torch_pruning", name),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- CIFAR ResNet-56

CRITERIA = ["l1", "l2", "bn_scale", "taylor", "random"]
STREAM = ["conv1", "layer*.conv2", "linear"]


def cifar() -> dict:
    import graphopt
    from graphopt.passes import ChannelPruning
    from graphopt.testing.data import batches, load_cifar10, top1
    from graphopt.testing.zoo import cifar_resnet

    weights = DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
    model = cifar_resnet(56, weights)
    x, y = load_cifar10(DATA / "cifar10" / "test_uint8.npz")
    xc, yc = load_cifar10(DATA / "cifar10" / "train20k_uint8.npz", limit=512, seed=0)
    calibration = list(batches(xc, yc, 64))
    results = {"baseline_top1": top1(model, x, y), "target_macs_reduction": TARGET, "rows": []}
    for criterion in CRITERIA:
        for variant, exclude in (("all channels", []), ("block-inner channels", STREAM)):
            start = time.perf_counter()
            result = graphopt.optimize(
                model,
                x[:1],
                [ChannelPruning(ratio=TARGET, importance=criterion, exclude=exclude)],
                calibration_data=calibration,
            )
            row = {
                "tool": "graphopt",
                "criterion": criterion,
                "channels": variant,
                "macs_reduction": result.report.passes[0].metrics["achieved_macs_reduction"],
                "seconds": time.perf_counter() - start,
                "top1": top1(result.model, x, y),
            }
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
        for variant in ("all channels", "block-inner channels"):
            row = {"tool": "torch_pruning", "criterion": criterion, "channels": variant}
            try:
                row.update(
                    tp_cifar(model, criterion, variant == "block-inner channels", calibration, x, y)
                )
            except Exception as exc:  # noqa: BLE001 - a crash is a result
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
    return results


def tp_cifar(base, criterion, inner_only, calibration, x, y) -> dict:
    import torch.nn.functional as F
    import torch_pruning as tp

    from graphopt.testing.data import top1

    model = copy.deepcopy(base)
    example = x[:1]
    importance = {
        "l1": tp.importance.GroupMagnitudeImportance(p=1),
        "l2": tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance(),
        "taylor": tp.importance.GroupTaylorImportance(),
        "random": tp.importance.RandomImportance(),
    }[criterion]
    ignored = [model.linear]
    if inner_only:
        ignored += [model.conv1] + [
            b.conv2 for s in (model.layer1, model.layer2, model.layer3) for b in s
        ]
    base_macs, _ = tp.utils.count_ops_and_params(model, example)
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        global_pruning=True,
        pruning_ratio=0.9,
        iterative_steps=400,
        ignored_layers=ignored,
    )
    macs = base_macs
    for _ in range(400):
        if criterion == "taylor":
            model.zero_grad()
            for xb, yb in calibration:
                F.cross_entropy(model(xb), yb).backward()
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example)
        if macs <= (1 - TARGET) * base_macs:
            break
    return {
        "macs_reduction": 1 - macs / base_macs,
        "seconds": time.perf_counter() - start,
        "top1": top1(model, x, y),
    }


def cifar_iterative() -> list[dict]:
    """graphopt with re-scored rounds (iterations=8), block-inner channels."""
    import graphopt
    from graphopt.passes import ChannelPruning
    from graphopt.testing.data import batches, load_cifar10, top1
    from graphopt.testing.zoo import cifar_resnet

    model = cifar_resnet(56, DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    x, y = load_cifar10(DATA / "cifar10" / "test_uint8.npz")
    xc, yc = load_cifar10(DATA / "cifar10" / "train20k_uint8.npz", limit=512, seed=0)
    calibration = list(batches(xc, yc, 64))
    rows = []
    for criterion in ("l1", "taylor"):
        start = time.perf_counter()
        result = graphopt.optimize(
            model,
            x[:1],
            [ChannelPruning(ratio=TARGET, importance=criterion, exclude=STREAM, iterations=8)],
            calibration_data=calibration,
        )
        row = {
            "tool": "graphopt (iterations=8)",
            "criterion": criterion,
            "channels": "block-inner channels",
            "macs_reduction": result.report.passes[0].metrics["achieved_macs_reduction"],
            "seconds": time.perf_counter() - start,
            "top1": top1(result.model, x, y),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- timing


def timing(repeats: int = 5) -> dict:
    import graphopt
    from graphopt.channels import build_channel_graph, find_groups
    from graphopt.pass_base import PassContext
    from graphopt.passes import ChannelPruning

    model, x = build("resnet50")
    phases = {"capture": [], "analysis": [], "prune_pass": [], "total": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        gm = graphopt.capture(model, x)
        t1 = time.perf_counter()
        find_groups(build_channel_graph(gm))
        t2 = time.perf_counter()
        ChannelPruning(ratio=TARGET)(gm, PassContext(example_inputs=(x,)))  # analysis included
        t3 = time.perf_counter()
        phases["capture"].append(t1 - t0)
        phases["analysis"].append(t2 - t1)
        phases["prune_pass"].append(t3 - t2)
        phases["total"].append((t1 - t0) + (t3 - t2))
    return {k: statistics.median(v) for k, v in phases.items()} | {"repeats": repeats}


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = [
        "# Channel pruning: graphopt vs Torch-Pruning",
        "",
        f"Generated by `python bench/pruning.py`; torch {torch.__version__}, 2 CPU cores.",
        "",
    ]
    if "zoo" in results:
        lines += [
            "## torchvision zoo, 50 % of MACs requested, random weights",
            "",
            "| model | graphopt | MACs −% | s | Torch-Pruning | MACs −% | s |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["zoo"]:
            cells = [row["model"]]
            for tool in ("graphopt", "torch_pruning"):
                r = row[tool]
                if r.get("ok"):
                    cells += ["ok", f"{100 * r['macs_reduction']:.1f}", f"{r['seconds']:.1f}"]
                else:
                    cells += [f"failed: {r.get('error', 'wrong output')}"[:80], "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        ok = {
            t: sum(bool(r[t].get("ok")) for r in results["zoo"])
            for t in ("graphopt", "torch_pruning")
        }
        lines += [
            "",
            f"Succeeded: graphopt {ok['graphopt']}/{len(results['zoo'])}, "
            f"Torch-Pruning {ok['torch_pruning']}/{len(results['zoo'])}.",
            "",
        ]
    if "cifar" in results:
        c = results["cifar"]
        lines += [
            "## CIFAR-10 ResNet-56, one-shot, 2× fewer MACs (no fine-tuning)",
            "",
            f"Baseline top-1 {c['baseline_top1']:.2f} % on the 10,000 test images.",
            "",
            "| criterion | channels | tool | MACs −% | top-1 % | s |",
            "|---|---|---|---|---|---|",
        ]
        for r in c["rows"]:
            if "top1" in r:
                lines.append(
                    f"| {r['criterion']} | {r['channels']} | {r['tool']} | "
                    f"{100 * r['macs_reduction']:.1f} | {r['top1']:.2f} | {r['seconds']:.1f} |"
                )
            else:
                lines.append(
                    f"| {r['criterion']} | {r['channels']} | {r['tool']} | failed: {r['error'][:60]} | | |"
                )
        lines.append("")
    if "timing" in results:
        t = results["timing"]
        lines += [
            "## resnet50: capture + analysis + pruning",
            "",
            f"Median of {t['repeats']}: capture {t['capture']:.2f} s, coupled-channel analysis "
            f"{t['analysis']:.2f} s, ChannelPruning pass (analysis, importance, budget, surgery, "
            f"one trial run) {t['prune_pass']:.2f} s; capture + pass {t['total']:.2f} s.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "MODEL"))
    parser.add_argument("--zoo-only", action="store_true")
    parser.add_argument("--cifar-only", action="store_true")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--cifar-iterative", action="store_true")
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    torch.set_num_threads(2)
    path = RESULTS / "pruning.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    everything = not (args.zoo_only or args.cifar_only or args.timing_only or args.cifar_iterative)
    if everything or args.cifar_iterative:
        rows = [
            r for r in results.get("cifar", {}).get("rows", []) if "iterations" not in r["tool"]
        ]
        results.setdefault("cifar", {"rows": []})["rows"] = rows + cifar_iterative()
    if everything or args.timing_only:
        results["timing"] = timing()
        print(json.dumps(results["timing"]), flush=True)
    if everything or args.cifar_only:
        results["cifar"] = cifar()
    if everything or args.zoo_only:
        results["zoo"] = zoo()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (RESULTS / "pruning.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
