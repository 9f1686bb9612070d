"""Shared by the Net2Net passes: which coupled channel groups hold *units* that can be copied
or merged, and the role of every parameter dim in them.

A unit is one channel of a coupled group (the analysis of ``graphopt.channels``, as for
pruning). Its *incoming* parameters (producer output rows, biases, norm parameters and
statistics, depthwise filters) define what it computes; its *outgoing* parameters (the input
columns of the layers that read it) say how it is used. Copying a unit copies its incoming
parameters and splits its outgoing ones; merging units adds their outgoing parameters together.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from graphopt.analysis.shapes import propagate_shapes
from graphopt.analysis.ties import tied_parameter_names
from graphopt.channels import ChannelGroup, build_channel_graph, find_groups
from graphopt.channels.graph import Dim
from graphopt.channels.surgery import resize
from graphopt.errors import CaptureError
from graphopt.report import Decline
from graphopt.verify import EXACT_TOLERANCE, relative_error

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class UnitGroup:
    """A group whose dims hold at most one element per unit (concat parts hold a subset)."""

    group: ChannelGroup
    element: dict[Dim, np.ndarray]  # element[dim][u]: unit u's element in dim, -1 if absent
    incoming: list[Dim]  # parameter dims copied with the unit
    outgoing: list[Dim]  # parameter dims (input columns) split or summed

    @property
    def units(self) -> int:
        return self.group.num_channels

    def layers(self) -> list[str]:
        return sorted({d.owner.rpartition(".")[0] for d in self.incoming})

    @property
    def name(self) -> str:
        """The layers producing the units, as reports name the group."""
        return ", ".join(self.layers())

    def decline(self, reason: str) -> Decline:
        return Decline(target=self.name, reason=reason)


def unit_groups(gm: fx.GraphModule, selects) -> tuple[list[UnitGroup], list[Decline]]:
    """Groups the Net2Net passes can work on, and why the others are left alone."""
    found, declined = [], []
    for group in find_groups(build_channel_graph(gm)):
        if not group.params or not any(_produces(gm, d) for d in group.params):
            continue  # the model's input channels, or nothing to copy: not a choice to report
        name = _describe(group)
        reason = _refusal(gm, group, selects)
        if reason is None:
            unit_group, reason = _roles(gm, group)
            if unit_group is not None:
                found.append(unit_group)
                continue
        if reason:
            declined.append(Decline(target=name, reason=reason))
    return found, declined


def _refusal(gm, group: ChannelGroup, selects) -> str | None:
    if group.frozen_by:
        return "frozen: " + group.frozen_by[0]
    if group.num_channels < 1:
        return "no units"
    for d in group.dims:
        if len(np.unique(group.labels[d])) != len(group.labels[d]):
            return f"{d}: a unit spans several elements (reshape/flatten); not supported"
    if shared := sorted({d.owner for d in group.params} & tied_parameter_names(gm)):
        return f"tied parameter {shared[0]}: changing one of its users would untie it"
    owners = {d.owner.rpartition(".")[0] for d in group.params}
    if not any(selects(m, _module(gm, m)) for m in owners):
        return ""  # not selected: silent
    return None


def _roles(gm, group: ChannelGroup) -> tuple[UnitGroup | None, str | None]:
    incoming, outgoing = [], []
    for d in group.params:
        owner, _, param = d.owner.rpartition(".")
        module = _module(gm, owner)
        role = _role(module, param, d.axis)
        if role.startswith("refuse"):
            return None, f"{d}: {role.removeprefix('refuse: ')}"
        (outgoing if role == "outgoing" else incoming).append(d)
    if not incoming:
        return None, "no layer produces these units (only consumers); nothing to copy"
    element = {}
    for d in group.dims:
        element[d] = np.full(group.num_channels, -1)
        element[d][group.labels[d]] = np.arange(len(group.labels[d]))
    return UnitGroup(group, element, incoming, outgoing), None


def _role(module: nn.Module | None, param: str, axis: int) -> str:
    if isinstance(module, CHANNEL_MIXING_NORMS):
        return f"refuse: {type(module).__name__} normalises across units (copies change it)"
    if isinstance(module, CONVS):
        depthwise = module.groups == module.in_channels and module.groups > 1
        if module.groups > 1 and not depthwise:
            return "refuse: grouped convolution (units of different groups cannot be copied)"
        return "outgoing" if (param == "weight" and axis == 1 and not depthwise) else "incoming"
    if isinstance(module, CONV_TRANSPOSES):
        if module.groups > 1:
            return "refuse: grouped transposed convolution"
        return "outgoing" if (param == "weight" and axis == 0) else "incoming"
    if isinstance(module, nn.Linear):
        return "outgoing" if (param == "weight" and axis == 1) else "incoming"
    if isinstance(module, nn.MultiheadAttention):
        return "refuse: attention heads are not copied unit by unit"
    return "incoming"  # norms' per-channel params, PReLU, layer scales, tokens: per unit


def _produces(gm, d: Dim) -> bool:
    owner, _, param = d.owner.rpartition(".")
    return _role(_module(gm, owner), param, d.axis) != "outgoing"


@dataclass
class Plan:
    """New units ``picks[k]`` (copies of, or kept, old units) laid out in every dim."""

    sources: dict[Dim, np.ndarray]  # per dim: old element of each new element
    order: dict[Dim, np.ndarray]  # per dim: which k each new element holds
    mixes: dict[Dim, np.ndarray]  # outgoing dims: old elements × new elements


def plan(unit_group: UnitGroup, picks: np.ndarray, unit_mix: np.ndarray) -> Plan:
    """Lay out new units ``picks`` in every dim: each element keeps its place and its copies
    follow it, so concatenations, splits and pads stay consistent part by part. ``unit_mix``
    (old units × k) says how the outgoing weights of old units feed new unit k."""
    sources, orders, mixes = {}, {}, {}
    for d in unit_group.group.dims:
        where = unit_group.element[d][picks]
        present = np.flatnonzero(where >= 0)
        order = present[np.lexsort((present, where[present]))]
        sources[d], orders[d] = where[order], order
        if d in unit_group.outgoing:
            old = np.flatnonzero(unit_group.element[d] >= 0)
            mix = np.zeros((len(unit_group.group.labels[d]), len(order)))
            mix[unit_group.element[d][old]] = unit_mix[old][:, order]
            mixes[d] = mix
    return Plan(sources, orders, mixes)


def try_resize(gm, sources, mixes, inputs, compare: bool):
    """Resize a copy of ``gm`` and run it; ``(copy, None)`` or ``(None, why not)``.

    With ``compare``, the outputs must equal ``gm``'s (``EXACT_TOLERANCE``), as copying and merging
    exact duplicates promise.
    """
    candidate = copy.deepcopy(gm)
    try:
        resize(candidate, sources, mixes)
        propagate_shapes(candidate, inputs)
    except (CaptureError, RuntimeError, ValueError) as exc:
        return None, f"the resized graph does not run: {str(exc).splitlines()[0][:200]}"
    if compare:
        error = relative_difference(gm, candidate, inputs)
        if error > EXACT_TOLERANCE:
            return None, f"not function-preserving here (relative output change {error:.2e})"
    return candidate, None


def relative_difference(a: nn.Module, b: nn.Module, inputs) -> float:
    """``max|b(x) - a(x)| / max|a(x)|`` on the inputs (the pass manager's measure)."""
    with torch.no_grad():
        return relative_error(b(*inputs), a(*inputs))


def _describe(group: ChannelGroup) -> str:
    layers = sorted({d.owner.rpartition(".")[0] for d in group.params})
    return ", ".join(layers[:3]) + ("…" if len(layers) > 3 else "")


def _module(gm: fx.GraphModule, name: str) -> nn.Module | None:
    try:
        return gm.get_submodule(name)
    except AttributeError:
        return None
