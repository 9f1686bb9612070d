"""Per-group budgets from measured sensitivity: how much loss each group's removals cost.

Each prunable group alone is thinned to a grid of fractions (its own channel order: the
importance criterion's) and the pruned copy's loss is measured on calibration batches:
cross-entropy when batches carry labels, otherwise the output's squared error against the
original's relative to its energy. Taking the losses as additive over groups, the removals
that meet the MAC target at the least total loss increase are chosen greedily along each
group's lower convex hull (the best loss-per-MAC step first), the last step bisected so the
target is met without overshooting it by a whole grid step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from graphopt.analysis.calibration import split_batch
from graphopt.channels.surgery import prune
from graphopt.passes.compress.channel_pruning.budget import GroupPlan

FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)


@dataclass
class Curve:
    """Loss increase (over the unpruned model) at each measured removal count of one group."""

    counts: list[int]
    losses: list[float]


def measure(
    gm: fx.GraphModule, plans: list[GroupPlan], batches: list
) -> tuple[dict[int, Curve], dict[int, str]]:
    """The loss of ``gm`` with each group alone thinned to each fraction of ``FRACTIONS``, and
    the groups whose thinned copy failed to run (with the error; their curve stops there)."""
    labels = [split_batch(b)[1] for b in batches]
    reference = _outputs(gm, batches)
    base = _loss(reference, reference, labels)
    curves, broken = {}, {}
    for plan in plans:
        counts, losses = [0], [0.0]
        for fraction in FRACTIONS:
            chosen = plan.select(int(fraction * plan.group.num_channels))
            if len(chosen) <= counts[-1]:
                continue
            candidate = copy.deepcopy(gm)
            prune(candidate, {d: plan.group.removed_indices(d, chosen) for d in plan.group.dims})
            try:
                outputs = _outputs(candidate, batches)
            except RuntimeError as exc:
                broken[plan.group.index] = str(exc).splitlines()[0][:300]
                break
            counts.append(len(chosen))
            losses.append(_loss(outputs, reference, labels) - base)
        curves[plan.group.index] = Curve(counts, losses)
    return curves, broken


def allocate(plans: list[GroupPlan], curves: dict[int, Curve], cost, target: float):
    """Removal count per group meeting ``cost(selection) ≤ target`` at the least summed loss
    increase; returns (selection, reached)."""
    by_index = {p.group.index: p for p in plans}
    state = {i: 0 for i in curves}  # position on each group's hull
    hulls = {i: _lower_hull(c) for i, c in curves.items()}

    def selection(counts: dict[int, int]):
        return {i: by_index[i].select(n) for i, n in counts.items()}

    counts = {i: 0 for i in curves}
    current = cost(selection(counts))
    while current > target:
        step = _best_step(hulls, state, counts, selection, cost, current)
        if step is None:
            return selection(counts), False
        index, position, after = step
        if after < target:  # this step overshoots: the fewest removals on it that suffice
            low, high = counts[index], hulls[index][position][0]
            counts[index] = _bisect(index, low, high, counts, selection, cost, target)
            return selection(counts), True
        state[index], counts[index], current = position, hulls[index][position][0], after
    return selection(counts), True


def _best_step(hulls, state, counts, selection, cost, current):
    """The next hull point of some group with the least loss per MAC saved."""
    best, best_ratio = None, np.inf
    for index, hull in hulls.items():
        position = state[index] + 1
        if position >= len(hull):
            continue
        trial = {**counts, index: hull[position][0]}
        after = cost(selection(trial))
        saved = current - after
        if saved <= 0:
            continue
        ratio = (hull[position][1] - hull[state[index]][1]) / saved
        if ratio < best_ratio:
            best, best_ratio = (index, position, after), ratio
    return best


def _bisect(index, low: int, high: int, counts, selection, cost, target) -> int:
    while high - low > 1:
        middle = (low + high) // 2
        if cost(selection({**counts, index: middle})) <= target:
            high = middle
        else:
            low = middle
    return high


def _lower_hull(curve: Curve) -> list[tuple[int, float]]:
    """The lower convex hull of (count, loss), starting at (0, 0), loss made non-decreasing."""
    points = list(zip(curve.counts, np.maximum.accumulate(curve.losses), strict=True))
    hull: list[tuple[int, float]] = []
    for point in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    return hull


def _cross(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _outputs(gm: fx.GraphModule, batches: list) -> list[torch.Tensor]:
    with torch.no_grad():
        return [_first_tensor(gm(*split_batch(b)[0])) for b in batches]


def _loss(outputs: list[torch.Tensor], reference: list[torch.Tensor], labels: list) -> float:
    """Mean cross-entropy on the batches' labels, else relative squared error to reference."""
    if all(isinstance(y, torch.Tensor) for y in labels) and outputs[0].dim() == 2:
        total = sum(
            F.cross_entropy(o, y, reduction="sum") for o, y in zip(outputs, labels, strict=True)
        )
        return float(total) / sum(len(y) for y in labels)
    error = sum(
        float((o - r).double().pow(2).sum()) for o, r in zip(outputs, reference, strict=True)
    )
    energy = sum(float(r.double().pow(2).sum()) for r in reference)
    return error / max(energy, 1e-30)


def _first_tensor(output) -> torch.Tensor:
    while isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    return output.detach()
