"""Pruning under a fixed CPU budget: graphopt against Torch-Pruning's best, CIFAR-10 ResNet-56.

Each arm starts from the pretrained ResNet-56 and ends at the same MACs (block-inner channels,
round_to 8), and spends at most ``--budget`` CPU seconds (``time.process_time`` of its own
process, one thread; test-set scoring is not counted) on everything: selection, sparse
training, recovery and distillation. The distillation gets whatever the earlier stages left,
as a whole number of optimiser steps measured from a probe of the same loop.

Arms (every one ends with the same recovery: BN recalibration → layer-wise reconstruction →
BN recalibration → distillation, labels + T = 4 logits from the dense model, SGD lr 0.01 cosine,
random crops and flips, the best of the validated checkpoints on 1000 held-out images):

- ``graphopt``: ChannelPruning(importance="output_error"), global ranking, on 512 images;
- ``tp-l1``: Torch-Pruning's MetaPruner, group L1, global, stepped to the MACs;
- ``tp-sparse``: Torch-Pruning's sparse learning (GroupNormPruner, reg 5e-4, its ``regularize``
  after every backward, the same loss and data) for a quarter of the budget, then its
  group-norm pruning, stepped to the MACs.

    python bench/budget_cifar.py                 # every arm at 2× and 3×, two processes at a time
    python bench/budget_cifar.py --arm graphopt --ratio 2   # one arm (what the runner calls)
    python bench/budget_cifar.py --report        # the table and plot from the arms on disk

Writes bench/results/budget_cifar.{json,md,png}; the arms' rows are kept in bench/scratch/budget,
and an arm already in bench/results/budget_cifar.json is not run again (delete its row to rerun).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
SCRATCH = Path(os.environ.get("BUDGET_SCRATCH", ROOT / "bench" / "scratch" / "budget"))
ARMS = ("graphopt", "tp-l1", "tp-sparse")
RATIOS = (2.0, 3.0)
SPARSE_SHARE = 0.25  # of the budget, for tp-sparse's sparse learning
PROBE_STEPS = 8
VALIDATE_EVERY = 50

import e2e_cifar as e2e  # noqa: E402


class Clock:
    """CPU seconds of this process spent on the arm (scoring excluded with ``paused``)."""

    def __init__(self) -> None:
        self.spent, self._since = 0.0, time.process_time()

    def now(self) -> float:
        return self.spent + time.process_time() - self._since

    @contextlib.contextmanager
    def paused(self):
        self.spent += time.process_time() - self._since
        try:
            yield
        finally:
            self._since = time.process_time()


def _distillation(steps: int, progress: bool):
    from graphopt.passes import KnowledgeDistillation

    return KnowledgeDistillation(
        steps=steps,
        lr=0.01,
        temperature=4.0,
        label_weight=1.0,
        validate_every=VALIDATE_EVERY,
        progress=progress,
    )


def _step_seconds(model, original, example, data) -> float:
    """CPU seconds per distillation step of this model (a probe on a copy)."""
    start = time.process_time()
    e2e._recovered(
        copy.deepcopy(model),
        [_distillation(PROBE_STEPS, False)],
        original,
        example,
        data,
        training_data=data["training"],
    )
    return (time.process_time() - start) / PROBE_STEPS


def graphopt_cut(ratio, original, example, data, clock, budget):
    import graphopt
    from graphopt.passes import ChannelPruning

    pruning = ChannelPruning(
        ratio=1 - 1 / ratio, importance="output_error", exclude=e2e.STREAM, round_to=8
    )
    result = graphopt.optimize(original, example, [pruning], calibration_data=data["calibration"])
    return result.model, {}


def tp_l1_cut(ratio, original, example, data, clock, budget):
    return e2e.torch_pruning(original, example, 1 - 1 / ratio, 8, 400), {}


def tp_sparse_cut(ratio, original, example, data, clock, budget):
    """Torch-Pruning's sparse learning for a share of the budget, then its pruning."""
    import torch_pruning as tp

    model = copy.deepcopy(original).train()
    teacher = copy.deepcopy(original).eval()
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=5e-4,
        global_pruning=True,
        pruning_ratio=0.95,
        iterative_steps=400,
        ignored_layers=e2e.stream_modules(model),
        round_to=8,
    )
    # Building the pruner traces the model and leaves it in eval mode: training with frozen
    # BatchNorm statistics at this rate diverges within ~20 steps (NaN weights).
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    share, steps, start = SPARSE_SHARE * budget, 0, clock.now()
    while clock.now() - start < share:
        for x, y in data["training"]:
            logits = model(x)
            with torch.no_grad():
                target = F.log_softmax(teacher(x) / 4.0, dim=-1)
            kd = F.kl_div(
                F.log_softmax(logits / 4.0, -1), target, reduction="batchmean", log_target=True
            )
            loss = 16.0 * kd + F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pruner.regularize(model)
            optimizer.step()
            steps += 1
            if clock.now() - start >= share:
                break
    model.eval()  # the MAC counts run the model: BN statistics must not move
    e2e.step_to_macs(pruner, model, example, 1 - 1 / ratio, 400)
    epochs = steps / len(data["training"])
    return model, {"sparse_steps": steps, "sparse_epochs": round(epochs, 2)}


CUTS = {"graphopt": graphopt_cut, "tp-l1": tp_l1_cut, "tp-sparse": tp_sparse_cut}


def run_arm(arm: str, ratio: float, budget: float, progress: bool, test_limit=None) -> dict:
    from graphopt.analysis.cost import model_stats
    from graphopt.frontend.fx import capture
    from graphopt.testing.data import top1

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = e2e.Config(progress=progress, test_limit=test_limit)
    data = e2e.load_data(cfg)
    original, example = e2e.base_model()
    x, y = data["test"]
    xv, yv = data["validation"]
    clock = Clock()
    cut, extra = CUTS[arm](ratio, original, example, data, clock, budget)
    seconds = {"cut": clock.now()}
    with clock.paused():
        top = {"one-shot": top1(cut, x, y)}
    rebuilt = e2e.reconstructed(cut, original, example, data)
    seconds["reconstruction"] = clock.now() - seconds["cut"]
    with clock.paused():
        top["+ BN + reconstruction"] = top1(rebuilt, x, y)
    per_step = _step_seconds(rebuilt, original, example, data)
    start = time.process_time()
    top1(rebuilt, xv, yv)  # what one of the distillation's validations costs
    per_step += (time.process_time() - start) / VALIDATE_EVERY
    steps = max(0, int((budget - clock.now()) / per_step))
    before = clock.now()
    final = rebuilt
    if steps:
        final = e2e._recovered(
            rebuilt,
            [_distillation(steps, progress)],
            original,
            example,
            data,
            training_data=data["training"],
            validation=lambda m: top1(m, xv, yv),
        )
    seconds["distillation"] = clock.now() - before
    seconds["total"] = clock.now()
    with clock.paused():
        top["+ distillation"] = top1(final, x, y)
    stats = model_stats(capture(final, example))
    base = model_stats(capture(original, example))
    return {
        "arm": arm,
        "ratio": ratio,
        "budget_s": budget,
        "macs_ratio": base.macs / stats.macs,
        "params": stats.params,
        "top1": top,
        "distillation_steps": steps,
        "distillation_epochs": round(steps / len(data["training"]), 2),
        "step_seconds": per_step,
        "cpu_seconds": seconds,
        **extra,
    }


def run_all(arms, ratios, budget, parallel: int) -> None:
    """Every (arm, ratio) in its own one-thread process, ``parallel`` at a time."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    done = {(r["arm"], r["ratio"]) for r in _committed_rows()}
    todo = [
        (a, r)
        for r in ratios
        for a in arms
        if not _row_path(a, r).exists() and (a, r) not in done
    ]
    running: list[subprocess.Popen] = []
    while todo or running:
        while todo and len(running) < parallel:
            arm, ratio = todo.pop(0)
            cmd = [
                sys.executable,
                __file__,
                "--arm",
                arm,
                "--ratio",
                str(ratio),
                "--budget",
                str(budget),
                "--no-progress",
            ]
            running.append(subprocess.Popen(cmd))
        time.sleep(5)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                raise SystemExit(f"{' '.join(p.args)} failed ({p.returncode})")


def _committed_rows() -> list[dict]:
    committed = RESULTS / "budget_cifar.json"
    return json.loads(committed.read_text()) if committed.exists() else []


def _row_path(arm: str, ratio: float) -> Path:
    return SCRATCH / f"{arm}_{ratio:g}.json"


def report() -> None:
    """Tables from the committed rows, updated by the arms run since (bench/scratch/budget)."""
    rows = {(r["arm"], r["ratio"]): r for r in _committed_rows()}
    for path in sorted(SCRATCH.glob("*.json")):
        row = json.loads(path.read_text())
        rows[row["arm"], row["ratio"]] = row
    rows = list(rows.values())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "budget_cifar.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "budget_cifar.md").write_text(markdown(rows))
    plot(rows, RESULTS / "budget_cifar.png")


def markdown(rows: list[dict]) -> str:
    budget = rows[0]["budget_s"] if rows else 0
    lines = [
        "# Pruning under a fixed CPU budget: CIFAR-10 ResNet-56 (bench/budget_cifar.py)",
        "",
        f"Each arm: at most {budget:.0f} CPU seconds (one thread, `time.process_time`, test "
        "scoring excluded) for everything from the pretrained model (93.39 %) to the final one; "
        "the distillation gets what the earlier stages left. Top-1 % on the 10k test images.",
        "",
        "| ratio | arm | MACs ÷ | one-shot | + BN + reconstruction | + distillation | KD epochs "
        "| sparse epochs | CPU s (cut / recon / KD / total) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["ratio"], ARMS.index(r["arm"]))):
        t, s = r["top1"], r["cpu_seconds"]
        lines.append(
            f"| {r['ratio']:g}× | {r['arm']} | {r['macs_ratio']:.2f} | {t['one-shot']:.2f} "
            f"| {t['+ BN + reconstruction']:.2f} | {t['+ distillation']:.2f} "
            f"| {r['distillation_epochs']} | {r.get('sparse_epochs', '–')} "
            f"| {s['cut']:.0f} / {s['reconstruction']:.0f} / {s['distillation']:.0f} / "
            f"{s['total']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["macs_ratio"])
        if mine:
            ax.plot(
                [r["macs_ratio"] for r in mine],
                [r["top1"]["+ distillation"] for r in mine],
                "o-",
                label=arm,
            )
    ax.axhline(93.39, color="grey", ls="--", label="dense")
    ax.set_xlabel("MACs ÷ (ResNet-56)")
    ax.set_ylabel("top-1 % after the budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--ratio", type=float)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--budget", type=float, default=1800.0, help="CPU seconds per arm")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--test-limit", type=int, help="Score on a subset (smoke runs).")
    args = parser.parse_args()
    if args.arm:
        row = run_arm(args.arm, args.ratio, args.budget, not args.no_progress, args.test_limit)
        SCRATCH.mkdir(parents=True, exist_ok=True)
        _row_path(args.arm, args.ratio).write_text(json.dumps(row, indent=2))
        print(json.dumps(row), flush=True)
        return
    if not args.report:
        run_all(args.arms, args.ratios, args.budget, args.parallel)
    report()


if __name__ == "__main__":
    main()
