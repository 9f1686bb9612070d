"""Which channels go: turn importance scores and a MAC (or channel) budget into removals.

Each op handler gives a node's MACs as terms, each proportional to the sizes of some dims
(:mod:`graphopt.ops`), so the MACs left after removing channels are exactly
``Σ term · Π keep_fraction(dim)``. ``global`` scope removes the least
important channels across all groups step by step until the estimate meets the target;
``uniform`` scope finds by bisection the common fraction that meets it. Groups at their limit
drop out, which redistributes the budget to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import fx

from graphopt.channels.graph import ChannelGroup
from graphopt.ops import Dim, handler_for, module_of


@dataclass
class GroupPlan:
    """One prunable group: channel order by importance and how far it may shrink."""

    group: ChannelGroup
    importance: np.ndarray
    max_remove: int
    round_to: int
    counts: dict[Dim, np.ndarray]  # elements of each dim in each channel

    def select(self, n: int) -> np.ndarray:
        """The ``n`` (rounded, capped) least important channels, equal per block if blocked."""
        n = self._rounded(min(n, self.max_remove))
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        block_of = self.group.block_of
        if block_of is not None and (block_of >= 0).all():
            chosen = self._per_block(n, block_of)
        else:
            chosen = np.argsort(self.importance, kind="stable")[:n]
        return self._keep_every_dim_alive(chosen)

    def _rounded(self, n: int) -> int:
        total = self.group.num_channels
        kept = max(self.round_to, int(round((total - n) / self.round_to)) * self.round_to)
        return max(0, min(total - kept, self.max_remove))

    def _per_block(self, n: int, block_of: np.ndarray) -> np.ndarray:
        blocks = np.unique(block_of)
        per_block = n // len(blocks)
        chosen = []
        for b in blocks:
            members = np.flatnonzero(block_of == b)
            k = min(per_block, len(members) - 1)
            chosen.append(members[np.argsort(self.importance[members], kind="stable")[:k]])
        return np.concatenate(chosen)

    def _keep_every_dim_alive(self, chosen: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.group.num_channels, dtype=bool)
        mask[chosen] = True
        for counts in self.counts.values():
            if counts.sum() and not counts[~mask].sum():
                present = np.flatnonzero(mask & (counts > 0))
                mask[present[np.argmax(self.importance[present])]] = False
        return np.flatnonzero(mask)


class MacModel:
    """MACs of the graph as a function of how many elements each dim loses: every op
    handler's MAC term scaled by the kept fraction of each dim it is proportional to."""

    def __init__(self, gm: fx.GraphModule, sizes: dict[Dim, int]) -> None:
        self.terms: list[tuple[int, list[tuple[Dim, int]]]] = []
        self.total = 0
        for node in gm.graph.nodes:
            for macs, dims in handler_for(gm, node).mac_terms(node, module_of(gm, node)):
                if macs:
                    self.total += macs
                    self.terms.append((macs, [(d, sizes[d]) for d in dims if d in sizes]))

    def macs(self, removed: dict[Dim, int]) -> float:
        total = 0.0
        for macs, factors in self.terms:
            scale = 1.0
            for dim, size in factors:
                r = removed.get(dim)
                if r:
                    scale *= 1 - r / size
            total += macs * scale
        return total


def removed_counts(plans: list[GroupPlan], selection: dict[int, np.ndarray]) -> dict[Dim, int]:
    counts: dict[Dim, int] = {}
    for plan in plans:
        chosen = selection.get(plan.group.index)
        if chosen is None or not len(chosen):
            continue
        for dim, per_channel in plan.counts.items():
            counts[dim] = int(per_channel[chosen].sum())
    return counts


def select_uniform(plans: list[GroupPlan], fraction: float) -> dict[int, np.ndarray]:
    return {
        p.group.index: p.select(int(math.floor(fraction * p.group.num_channels))) for p in plans
    }


def search(select, lo: float, hi: float, cost, target: float, steps: int = 40):
    """Smallest parameter in [lo, hi] whose selection's cost is at most ``target``."""
    best = select(hi)
    if cost(best) > target:
        return best, False
    for _ in range(steps):
        mid = (lo + hi) / 2
        chosen = select(mid)
        if cost(chosen) <= target:
            hi, best = mid, chosen
        else:
            lo = mid
    return best, True


def select_global(plans: list[GroupPlan], cost, target: float, steps: int = 200):
    """Remove the globally least important channels in small steps until ``cost ≤ target``.

    After each step a group's scores are renormalised by the mean of its remaining channels,
    as Torch-Pruning's iterative global pruning does; measured on CIFAR ResNet-56 (block-inner
    channels, 2× fewer MACs, one-shot) this gives 53 % top-1 against 38 % for one global
    threshold on the initial scores.
    """
    removed = {p.group.index: np.zeros(p.group.num_channels, dtype=bool) for p in plans}
    total = sum(p.group.num_channels for p in plans)
    chunk = max(1, total // steps)
    selection = _selection(plans, removed)
    while cost(selection) > target:
        candidates = _ranked_candidates(plans, removed)
        if not candidates:
            return selection, False
        step = _smallest_step(plans, removed, candidates[:chunk], cost, target)
        for group, channel in candidates[:step]:
            removed[group][channel] = True
        selection = _selection(plans, removed)
    return selection, True


def _ranked_candidates(plans: list[GroupPlan], removed) -> list[tuple[int, int]]:
    """(group, channel) still removable, least important first (renormalised per group)."""
    scored = []
    for p in plans:
        alive = ~removed[p.group.index]
        if alive.sum() <= p.group.num_channels - p.max_remove:
            continue
        scores = p.importance / max(p.importance[alive].mean(), 1e-12)
        scored += [(scores[c], p.group.index, c) for c in np.flatnonzero(alive)]
    scored.sort()
    return [(g, c) for _, g, c in scored]


def _smallest_step(plans, removed, chunk, cost, target) -> int:
    """How many of ``chunk`` to remove: all, or the fewest that reach the target."""

    def after(k: int):
        trial = {g: r.copy() for g, r in removed.items()}
        for group, channel in chunk[:k]:
            trial[group][channel] = True
        return _selection(plans, trial)

    if cost(after(len(chunk))) > target:
        return len(chunk)
    lo, hi = 0, len(chunk)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost(after(mid)) <= target else (mid, hi)
    return hi


def _selection(plans: list[GroupPlan], removed) -> dict[int, np.ndarray]:
    return {p.group.index: p.select(int(removed[p.group.index].sum())) for p in plans}
