"""Data-aware channel order: remove the channels whose loss the consumers can best absorb.

For a consumer layer y = W·x (Conv2d rows are im2col patches, Linear rows are features) with
input second moment C = E[x xᵀ] on calibration data, removing the input columns of channel j
and refitting the remaining weights by least squares leaves the output error
``tr(W_j (P_jj)⁻¹ W_jᵀ)`` with ``P = C⁻¹`` (the optimal-brain-surgeon saliency of a block of
columns; ThiNet / He et al. 2017 choose channels by the same reconstruction error). The order
is greedy: after each removal the remaining weights take the least-squares compensation and P
drops the removed block (Frantar & Alistarh 2022), so correlated channels are not all kept or
all removed. A coupled group removes a channel from every consumer at once; its cost is the
sum of each consumer's error relative to that consumer's output energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import fx, nn

from graphopt.analysis.calibration import input_covariances
from graphopt.channels.graph import ChannelGroup, Dim

MAX_COLUMNS = 4096  # a consumer wider than this (im2col columns) is not modelled
RIDGE = 1e-6  # dampening of C, relative to the mean of its diagonal


@dataclass
class _Consumer:
    """One consumer layer of a group: its weight rows over the group's columns, P = C⁻¹."""

    weight: np.ndarray  # out × n
    inverse: np.ndarray  # n × n
    columns: list[np.ndarray]  # per channel of the group, its columns (indices into n)
    energy: float  # tr(W C Wᵀ)


def consumers_of(gm: fx.GraphModule, group: ChannelGroup) -> dict[str, Dim]:
    """The group's dims that are an ungrouped Conv2d's or a Linear's input axis, by module."""
    found = {}
    for dim in group.params:
        module_name, _, attr = dim.owner.rpartition(".")
        if attr != "weight" or dim.axis != 1:
            continue
        module = gm.get_submodule(module_name)
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
        ):
            found[module_name] = dim
    return found


def output_error_order(
    gm: fx.GraphModule, groups: list[ChannelGroup], batches: list[tuple], limit: dict[int, int]
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Per group, a score per channel that rises in the greedy removal order (the group's
    relative output error after that channel and all before it are gone); groups without a
    modelled consumer are left out, and the notes say which."""
    wanted = {g.index: consumers_of(gm, g) for g in groups}
    names = sorted({m for c in wanted.values() for m in c if _columns(gm, m) <= MAX_COLUMNS})
    covariances = input_covariances(gm, dict.fromkeys(names, "patches"), batches)
    scores, notes = {}, []
    for group in groups:
        dims = {m: d for m, d in wanted[group.index].items() if m in covariances}
        if not dims:
            notes.append(
                f"group {group.index}: no ungrouped Conv2d/Linear consumer of at most "
                f"{MAX_COLUMNS} input columns to model, l1 used"
            )
            continue
        consumers = [_consumer(gm, m, d, group, covariances[m]) for m, d in dims.items()]
        scores[group.index] = _greedy(consumers, group.num_channels, limit[group.index])
    return scores, notes


def _columns(gm: fx.GraphModule, name: str) -> int:
    weight = gm.get_submodule(name).weight
    return int(np.prod(weight.shape[1:]))


def _consumer(gm, name: str, dim: Dim, group: ChannelGroup, covariance) -> _Consumer:
    weight = gm.get_submodule(name).weight.detach().double()
    per_input = int(np.prod(weight.shape[2:]))  # kernel positions per input channel
    w = weight.reshape(weight.shape[0], -1).numpy()
    damp = RIDGE * max(float(np.mean(np.diag(covariance))), 1e-12)
    inverse = np.linalg.inv(covariance + damp * np.eye(len(covariance)))
    labels = group.labels[dim]
    offsets = np.arange(per_input)
    columns = [
        (np.flatnonzero(labels == c)[:, None] * per_input + offsets).ravel()
        for c in range(group.num_channels)
    ]
    energy = float(np.sum(w * (w @ covariance)))
    return _Consumer(w, inverse, columns, max(energy, 1e-30))


def _greedy(consumers: list[_Consumer], channels: int, steps: int) -> np.ndarray:
    """Remove ``steps`` channels one at a time, each the cheapest now; the removed get their
    cumulative error as score (rising), the never-removed a score above all of them."""
    alive = np.ones(channels, dtype=bool)
    score = np.zeros(channels)
    total = 0.0
    for _ in range(min(steps, channels - 1)):
        costs = np.full(channels, np.inf)
        for c in np.flatnonzero(alive):
            costs[c] = sum(_cost(k, c) for k in consumers)
        best = int(np.argmin(costs))
        if not np.isfinite(costs[best]):
            break
        total += costs[best]
        score[best] = total
        alive[best] = False
        for k in consumers:
            _remove(k, best)
    score[alive] = (total if total > 0 else 1.0) * 2 + np.arange(alive.sum()) * 1e-9
    return score


def _cost(k: _Consumer, c: int) -> float:
    cols = k.columns[c]
    if not len(cols):
        return 0.0
    block = k.inverse[np.ix_(cols, cols)]
    wc = k.weight[:, cols]
    try:
        solved = np.linalg.solve(block, wc.T)
    except np.linalg.LinAlgError:
        return float("inf")
    return float(np.sum(wc.T * solved)) / k.energy


def _remove(k: _Consumer, c: int) -> None:
    """Remove channel c's columns: compensate the others (OBS update), and drop them from P."""
    cols = k.columns[c]
    if not len(cols):
        return
    block = k.inverse[np.ix_(cols, cols)]
    rows = k.inverse[cols, :]
    solved = np.linalg.solve(block, rows)  # P_cc⁻¹ P_c:
    k.weight -= k.weight[:, cols] @ solved
    k.inverse -= k.inverse[:, cols] @ solved
    k.weight[:, cols] = 0.0
    k.inverse[cols, :] = 0.0
    k.inverse[:, cols] = 0.0


def in_order_of(order: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
    """The group's magnitude scores, sorted, handed out in ``order`` (lowest first): which
    channels go follows ``order``; how many go under the global ranking follows the
    magnitudes' spread (CIFAR ResNet-56 at 2×, block-inner, after BN + reconstruction: 89.2 %
    with this, 87.8 % ranking the output errors themselves, 88.8 % with l1 alone)."""
    result = np.empty_like(magnitudes)
    result[np.argsort(order, kind="stable")] = np.sort(magnitudes)
    return result
