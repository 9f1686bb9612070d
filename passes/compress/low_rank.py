"""LowRankFactorization: Linear/Conv → two or three thinner layers from a truncated SVD. Lossy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from torch import fx, nn

from graphopt.analysis import factorize as fz
from graphopt.analysis.calibration import (
    first_inputs,
    input_covariances,
    layer_inputs,
    relative_output_error,
)
from graphopt.analysis.cost import chain_macs, model_stats, node_macs
from graphopt.errors import ConfigError
from graphopt.ir import replace_with_chain
from graphopt.pass_base import CALIBRATION, Pass, PassContext, PassResult
from graphopt.report import Decline

Fraction = Annotated[float, Field(gt=0, lt=1)]


@dataclass
class Candidate:
    node: fx.Node
    name: str
    module: nn.Module
    macs: int


_RULE_FIELDS = ("rank", "rank_ratio", "energy", "param_ratio")


class LowRankFactorization(Pass):
    """Linear(in→out) ⇒ Linear(r→out) ∘ Linear(in→r); Conv ⇒ thin convs (channel, tucker2,
    spatial schemes) from truncated SVDs, optionally activation-aware (``whiten``).

    Rank: ``rank``, ``rank_ratio``, ``energy`` (smallest rank holding that fraction of the
    squared spectrum), ``param_ratio`` (keep that fraction of each layer's parameters), ``ratio`` (one energy for all layers, found so that the model loses that
    fraction of its MACs) or ``rank_method: vbmf``. A layer is replaced only when the factors
    cost fewer MACs and parameters, unless ``require_savings`` is false.
    """

    name: ClassVar[str] = "low_rank_factorization"
    exact: ClassVar[bool] = False

    scheme: Literal["channel", "tucker2", "spatial"] = Field(
        default="channel", description="How convolutions are factorized."
    )
    rank_method: Literal["svd", "vbmf"] = Field(
        default="svd", description="svd: rank from rank/rank_ratio/energy/ratio; vbmf: estimated."
    )
    rank: int | None = Field(default=None, ge=1, description="Fixed rank for every layer.")
    rank_ratio: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Rank as a fraction of the full rank."
    )
    energy: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Fraction of the squared singular values to keep."
    )
    param_ratio: Fraction | None = Field(
        default=None, description="Rank that keeps this fraction of each layer's parameters."
    )
    ratio: Fraction | None = Field(default=None, description="Fraction of model MACs to remove.")
    round_to: int = Field(
        default=1,
        ge=1,
        description="Ranks rounded up to a multiple of this (e.g. the vector width).",
    )
    whiten: bool = Field(default=False, description="Factor W·C^½ with calibration covariance C.")
    calibration_batches: int = Field(default=8, ge=1, description="Batches used by whiten.")
    require_savings: bool = Field(default=True, description="Only replace when MACs drop.")

    @model_validator(mode="after")
    def _one_rank_rule(self) -> LowRankFactorization:
        given = [f for f in (*_RULE_FIELDS, "ratio") if getattr(self, f) is not None]
        if self.rank_method == "vbmf" and given:
            raise ValueError(f"rank_method 'vbmf' picks ranks itself; remove {given}")
        if self.rank_method == "svd" and len(given) != 1:
            raise ValueError("give exactly one of rank, rank_ratio, energy, param_ratio or ratio")
        if self.whiten and self.scheme == "spatial":
            raise ValueError("whiten is available for linear layers and schemes channel, tucker2")
        return self

    def data_needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION}) if self.whiten else frozenset()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        candidates, declined = self._candidates(gm)
        covs, calib = self._covariances(gm, candidates, ctx)
        rule = self._rule(gm, candidates, covs)
        touched, notes, errors = [], [], []
        inputs = layer_inputs(gm, [c.name for c in candidates], calib[:2]) if calib else {}
        for c in candidates:
            modules = self._factorize(c.module, rule, covs.get(c.name))
            if modules is None:
                declined.append(
                    Decline(target=c.name, reason=f"scheme {self.scheme} needs a k×k kernel")
                )
                continue
            new_macs = chain_macs(modules, c.node)
            old_params = sum(p.numel() for p in c.module.parameters())
            new_params = sum(p.numel() for m in modules for p in m.parameters())
            if self.require_savings and (new_macs >= c.macs or new_params >= old_params):
                declined.append(
                    Decline(
                        target=c.name,
                        reason=(
                            f"factorized form is not smaller (MACs {c.macs:,} → {new_macs:,}, "
                            f"params {old_params:,} → {new_params:,})"
                        ),
                    )
                )
                continue
            note = f"{c.name}: rank {_rank(modules)}, MACs {c.macs:,} → {new_macs:,}"
            if inputs.get(c.name):
                error = relative_output_error(c.module, nn.Sequential(*modules), inputs[c.name])
                errors.append(error)
                note += f", relative output error {error:.3g}"
            notes.append(note)
            touched += replace_with_chain(gm, c.node, modules)
        if touched:
            gm.delete_all_unused_submodules()
            gm.recompile()
        report = self.report(bool(touched), touched, declined, notes)
        if errors:
            report.metrics["mean_relative_output_error"] = float(np.mean(errors))
        return PassResult(gm, bool(touched), report)

    def _candidates(self, gm: fx.GraphModule) -> tuple[list[Candidate], list[Decline]]:
        found, declined = [], []
        for node in gm.graph.nodes:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, (nn.Linear, nn.Conv2d)) or not self.selects(
                node.target, module
            ):
                continue
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1 or module.padding_mode != "zeros"
            ):
                declined.append(
                    Decline(target=node.target, reason="grouped or non-zero-padded conv")
                )
                continue
            found.append(Candidate(node, str(node.target), module, node_macs(gm, node)))
        return found, declined

    def _covariances(self, gm, candidates, ctx: PassContext):
        if not self.whiten and ctx.calibration_data is None:
            return {}, []
        if ctx.calibration_data is None:
            raise ConfigError("whiten needs calibration_data (optimize(..., calibration_data=...))")
        calib = first_inputs(ctx.calibration_data, self.calibration_batches)
        if not self.whiten:
            return {}, calib
        mode = "pixels" if self.scheme == "tucker2" else "patches"
        targets = {c.name: mode for c in candidates}
        return input_covariances(gm, targets, calib), calib

    def _rule(self, gm, candidates, covs) -> fz.RankRule:
        if self.rank_method == "vbmf":
            return fz.RankRule("vbmf", round_to=self.round_to)
        for field in _RULE_FIELDS:
            if getattr(self, field) is not None:
                return fz.RankRule(field, getattr(self, field), self.round_to)
        return self._energy_for_macs(gm, candidates, covs)

    def _energy_for_macs(self, gm, candidates, covs) -> fz.RankRule:
        """One energy for every layer, found by bisection, so the model loses ``ratio`` MACs."""
        total = model_stats(gm).macs
        target = (1 - self.ratio) * total

        def macs_at(energy: float) -> float:
            rule = fz.RankRule("energy", energy, self.round_to)
            left = total
            for c in candidates:
                modules = self._factorize(c.module, rule, covs.get(c.name))
                new = chain_macs(modules, c.node) if modules else c.macs
                left -= c.macs - min(new, c.macs) if not self.require_savings or new < c.macs else 0
            return left

        lo, hi = 1e-4, 1.0
        for _ in range(18):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs_at(mid) <= target else (lo, mid)
        return fz.RankRule("energy", lo, self.round_to)

    def _factorize(self, module: nn.Module, rule: fz.RankRule, cov) -> list[nn.Module] | None:
        w = module.weight.detach().double().numpy()
        bias = module.bias
        if isinstance(module, nn.Linear):
            f = fz.svd_factors(w, rule, cov)
            return [_linear(f.right, None, module), _linear(f.left, bias, module)]
        if self.scheme == "channel":
            n, c, kh, kw = w.shape
            f = fz.svd_factors(w.reshape(n, -1), rule, cov)
            first = _conv(f.right.reshape(f.rank, c, kh, kw), None, module, keep_geometry=True)
            return [first, _conv(f.left[:, :, None, None], bias, module)]
        if self.scheme == "tucker2":
            first, core, last = fz.tucker2(w, rule, cov)
            return [
                _conv(first[:, :, None, None], None, module),
                _conv(core, None, module, keep_geometry=True),
                _conv(last[:, :, None, None], bias, module),
            ]
        if module.kernel_size[0] == 1 or module.kernel_size[1] == 1:
            return None
        vertical, horizontal = fz.spatial_factors(w, rule)
        return [_conv(vertical, None, module, axis=0), _conv(horizontal, bias, module, axis=1)]


def _linear(weight: np.ndarray, bias, like: nn.Linear) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = fz.as_param(weight, like.weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def _conv(weight: np.ndarray, bias, like: nn.Conv2d, keep_geometry=False, axis=None) -> nn.Conv2d:
    """A conv with ``weight``; geometry (stride, padding, dilation) from ``like`` when the
    kernel is the spatial one, or along one axis only for spatial factors."""
    out_ch, in_ch, kh, kw = weight.shape
    stride, padding, dilation = (1, 1), (0, 0), (1, 1)
    if keep_geometry:
        stride, padding, dilation = like.stride, like.padding, like.dilation
    elif axis is not None:
        pick = lambda pair, default: tuple(v if i == axis else default for i, v in enumerate(pair))  # noqa: E731
        stride, padding, dilation = (
            pick(like.stride, 1),
            pick(like.padding, 0),
            pick(like.dilation, 1),
        )
    layer = nn.Conv2d(in_ch, out_ch, (kh, kw), stride, padding, dilation, bias=bias is not None)
    layer.weight = fz.as_param(weight, like.weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def _rank(modules: list[nn.Module]) -> str:
    ranks = [m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in modules[:-1]]
    return "×".join(str(r) for r in ranks)
