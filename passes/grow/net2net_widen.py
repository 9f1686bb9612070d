"""Net2NetWiden: n units → round(n·factor) by copying units and splitting their outgoing weights."""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import fx

from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.passes.grow.net2net import Plan, UnitGroup, plan, try_resize, unit_groups


class Net2NetWiden(Pass):
    """Units u ↦ copies of random units; outgoing W[:, u] / copies(u) ⇒ same function, wider.

    Net2WiderNet (Chen, Goodfellow & Shlens 2015) over coupled channel groups: a group grows
    from n to round(n·factor) units, every new unit a copy (seeded choice) of an existing one:
    its incoming weights, bias, BatchNorm statistics and affine parameters are copied, and the
    outgoing weights of each copied unit are divided by its number of copies. Without noise the
    function is exactly preserved, which is checked group by group; a group through which
    copying is not exact (an op mixing units) is declined with the measured change.
    """

    name: ClassVar[str] = "net2net_widen"
    exact: ClassVar[bool] = True

    factor: Annotated[float, Field(gt=1, le=16)] = Field(
        default=1.5, description="Every selected group grows to round(n·factor) units."
    )
    noise: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="Symmetry-breaking noise on the copies' incoming weights, relative to the "
        "weights' std (0: exactly function-preserving).",
    )

    def is_exact(self) -> bool:
        return self.noise == 0

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        groups, declined = unit_groups(gm, self.selects)
        rng = np.random.default_rng(ctx.seed)
        touched, notes, widened = [], [], 0
        for unit_group in groups:
            n = unit_group.units
            wider = round(n * self.factor)
            if wider <= n:
                notes.append(f"{unit_group.name}: {n} units stay {n}")
                continue
            picks = np.concatenate([np.arange(n), rng.integers(0, n, wider - n)])
            layout = self._plan(unit_group, picks)
            candidate, reason = try_resize(
                gm, layout.sources, layout.mixes, ctx.example_inputs, compare=True
            )
            if candidate is None:
                declined.append(unit_group.decline(reason))
                continue
            gm = candidate
            touched += unit_group.layers()
            if self.noise:
                self._perturb(gm, unit_group, layout, n, rng)
            notes.append(f"{unit_group.name}: {n} → {wider} units")
            widened += 1
        report = self.report(bool(touched), sorted(set(touched)), declined, notes)
        report.metrics["groups_widened"] = float(widened)
        return PassResult(gm, bool(touched), report)

    def _plan(self, unit_group: UnitGroup, picks: np.ndarray) -> Plan:
        """New unit k copies unit picks[k]; each copy gets 1/copies of the outgoing weights."""
        counts = np.bincount(picks, minlength=unit_group.units)
        mix = np.zeros((unit_group.units, len(picks)))
        mix[picks, np.arange(len(picks))] = 1.0 / counts[picks]
        return plan(unit_group, picks, mix)

    def _perturb(self, gm: fx.GraphModule, unit_group: UnitGroup, layout: Plan, n, rng) -> None:
        """Noise on the incoming weights of the copies only (the original units stay)."""
        for d in unit_group.incoming:
            owner, _, attr = d.owner.rpartition(".")
            tensor = getattr(gm.get_submodule(owner), attr)
            copies = torch.as_tensor(np.flatnonzero(layout.order[d] >= n))
            if attr != "weight" or not isinstance(tensor, torch.nn.Parameter) or not len(copies):
                continue
            with torch.no_grad():
                rows = tensor.index_select(d.axis, copies)
                noise = rng.standard_normal(rows.shape).astype(np.float32)
                rows += self.noise * float(tensor.std()) * torch.from_numpy(noise)
                tensor.index_copy_(d.axis, copies, rows)
