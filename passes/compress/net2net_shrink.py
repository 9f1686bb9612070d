"""Net2NetShrink: merge units that compute the same thing (or collinear activations) into one."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from torch import fx

from graphopt.analysis.calibration import first_inputs, run_batches
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.passes.grow.net2net import (
    UnitGroup,
    plan,
    relative_difference,
    try_resize,
    unit_groups,
)
from graphopt.passes.grow.net2net_depth import shrink_depth


class Net2NetShrink(Pass):
    """Units {u, v, …} with equal (or collinear) outputs ⇒ one unit; W[:, u] += c·W[:, v].

    The inverse of Net2NetWiden over coupled channel groups. ``criterion: weights`` compares
    each unit's whole incoming function (weights, bias, norm parameters and statistics);
    ``activations`` compares what the layers reading the units receive on calibration batches,
    and merges units whose activations are collinear (v ≈ c·u, dead units with c = 0). Units
    within ``tolerance`` of each other (complete linkage: every pair of a cluster is) merge
    into the largest; with ``target_ratio`` the closest clusters merge until the group has that
    fraction of its units (lossy; the error is reported). With ``depth``, layers that are
    (near) identities are removed and consecutive linear maps without a nonlinearity between
    them are fused when that lowers MACs. Exact when the merged units are exact duplicates.
    """

    name: ClassVar[str] = "net2net_shrink"
    exact: ClassVar[bool] = False

    tolerance: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="Largest relative distance between merged units (0: exact duplicates only).",
    )
    criterion: Literal["weights", "activations"] = Field(
        default="weights", description="Compare incoming weights, or activations on data."
    )
    target_ratio: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Keep this fraction of each group's units (closest merge first)."
    )
    depth: bool = Field(default=True, description="Also fold identities and fuse linear maps.")
    calibration_batches: int = Field(default=4, ge=1, description="Batches for activations.")

    def is_exact(self) -> bool:
        return self.criterion == "weights" and self.tolerance == 0 and self.target_ratio is None

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        original = gm
        groups, declined = unit_groups(gm, self.selects)
        activations = self._activations(gm, groups, ctx) if self.criterion == "activations" else {}
        touched, notes, merged = [], [], 0
        for unit_group in groups:
            if reason := self._too_few_samples(unit_group, activations):
                declined.append(unit_group.decline(reason))
                continue
            keep, factor = self._clusters(gm, unit_group, activations)
            if len(keep) == unit_group.units:
                continue
            layout = _merge_plan(unit_group, keep, factor)
            candidate, reason = try_resize(
                gm, layout.sources, layout.mixes, ctx.example_inputs, compare=self.is_exact()
            )
            if candidate is None:
                declined.append(unit_group.decline(reason))
                continue
            gm, merged = candidate, merged + unit_group.units - len(keep)
            touched += unit_group.layers()
            notes.append(f"{unit_group.name}: {unit_group.units} → {len(keep)}")
        if self.depth:
            gm, depth_touched, depth_notes, depth_declined = shrink_depth(gm, self, ctx)
            touched += depth_touched
            notes += depth_notes
            declined += depth_declined
        report = self.report(bool(touched), sorted(set(touched)), declined, notes)
        report.metrics["units_merged"] = float(merged)
        if touched and not self.is_exact():
            error = relative_difference(original, gm, ctx.example_inputs)
            report.metrics["relative_output_change"] = error
        return PassResult(gm, bool(touched), report)

    def _too_few_samples(self, unit_group: UnitGroup, activations) -> str | None:
        """Collinearity judged on a handful of samples is meaningless (one sample: all units
        look collinear), so a group needs at least max(16, units) samples per unit."""
        if self.criterion != "activations":
            return None
        samples = activations[unit_group.group.index].shape[1]
        if samples >= max(16, unit_group.units):
            return None
        return (
            f"only {samples} activation samples per unit for {unit_group.units} units; "
            "pass more calibration_data"
        )

    def _clusters(self, gm, unit_group: UnitGroup, activations):
        """``keep[k]``: the unit that cluster ``k`` keeps; ``factor[u]``: u ≈ factor·keep."""
        if self.criterion == "activations":
            vectors = activations[unit_group.group.index]
        else:
            vectors = _incoming(gm, unit_group)
        distance, factor = _distances(vectors, collinear=self.criterion == "activations")
        labels = self._labels(distance, vectors, unit_group.units)
        norms = np.linalg.norm(vectors, axis=1)
        keep, owner = [], np.empty(unit_group.units, dtype=np.int64)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            leader = members[np.argmax(norms[members])]
            keep.append(leader)
            owner[members] = leader
        scale = factor[owner, np.arange(unit_group.units)]
        return np.array(sorted(keep)), (owner, scale)

    def _labels(self, distance: np.ndarray, vectors: np.ndarray, n: int) -> np.ndarray:
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        tree = linkage(squareform(distance, checks=False), method="complete")
        if self.target_ratio is not None:
            return fcluster(tree, t=max(1, round(n * self.target_ratio)), criterion="maxclust")
        if self.tolerance == 0:
            return _exact_labels(vectors)
        return fcluster(tree, t=self.tolerance, criterion="distance")

    def _activations(self, gm, groups: list[UnitGroup], ctx: PassContext) -> dict[int, np.ndarray]:
        """Per group, per unit: what the layers reading the unit receive (flattened)."""
        batches = first_inputs(
            ctx.calibration_data or [ctx.example_inputs], self.calibration_batches
        )
        readers = {g.group.index: _readers(gm, g) for g in groups}
        seen: dict[str, list[torch.Tensor]] = {}
        hooks = {}
        for names in readers.values():
            for name, _ in names:
                hooks[name] = lambda m, a, _n=name: seen.setdefault(_n, []).append(a[0].detach())
        run_batches(gm, batches, input_hooks=hooks)
        result = {}
        for g in groups:
            rows = []
            for name, axis in readers[g.group.index]:
                x = torch.cat(seen[name]).movedim(axis, 0).reshape(g.units, -1)
                rows.append(x.double().numpy())
            result[g.group.index] = np.concatenate(rows, axis=1) if rows else np.zeros((g.units, 1))
        return result


def _readers(gm, unit_group: UnitGroup) -> list[tuple[str, int]]:
    """Modules whose input columns are the units, with the units' axis in their input."""
    names = sorted({d.owner.rpartition(".")[0] for d in unit_group.outgoing})
    return [(n, -1 if isinstance(gm.get_submodule(n), torch.nn.Linear) else 1) for n in names]


def _incoming(gm, unit_group: UnitGroup) -> np.ndarray:
    """Per unit, everything that defines its function, flattened into one row."""
    parts = []
    for d in unit_group.incoming:
        owner, _, attr = d.owner.rpartition(".")
        tensor = getattr(gm.get_submodule(owner), attr).detach().double().movedim(d.axis, 0)
        rows = np.zeros((unit_group.units, tensor[0].numel()))  # zeros where a unit is absent
        present = np.flatnonzero(unit_group.element[d] >= 0)
        index = torch.as_tensor(unit_group.element[d][present])
        rows[present] = tensor[index].reshape(len(present), -1).numpy()
        parts.append(rows)
    return np.concatenate(parts, axis=1)


def _distances(vectors: np.ndarray, *, collinear: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise distances and the factor c with v ≈ c·u (``factor[u, v]``)."""
    norms = np.linalg.norm(vectors, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    if collinear:
        gram = vectors @ vectors.T
        cos = np.clip(gram / np.outer(safe, safe), -1.0, 1.0)
        distance = np.sqrt(np.maximum(0.0, 1.0 - cos**2))
        factor = gram / (safe**2)[:, None]
        dead = norms == 0
        distance[dead, :] = distance[:, dead] = 0.0  # a dead unit merges anywhere, with c = 0
        factor[:, dead] = 0.0
    else:
        sq = (norms**2)[:, None] + (norms**2)[None, :] - 2 * vectors @ vectors.T
        scale = np.maximum(np.maximum.outer(norms, norms), 1e-30)
        distance = np.sqrt(np.maximum(sq, 0.0)) / scale
        factor = np.ones_like(distance)
    np.fill_diagonal(distance, 0.0)
    return (distance + distance.T) / 2, factor


def _exact_labels(vectors: np.ndarray) -> np.ndarray:
    """Units with bit-identical incoming parameters share a label (no rounding involved)."""
    _, labels = np.unique(vectors, axis=0, return_inverse=True)
    return labels.reshape(-1)


def _merge_plan(unit_group: UnitGroup, keep: np.ndarray, factor):
    """Leaders stay; each leader's outgoing weights become Σ over its cluster of c·W[:, member]."""
    owner, scale = factor
    column = {int(u): k for k, u in enumerate(keep)}
    mix = np.zeros((unit_group.units, len(keep)))
    for u in range(unit_group.units):
        mix[u, column[int(owner[u])]] = scale[u]
    return plan(unit_group, keep, mix)
