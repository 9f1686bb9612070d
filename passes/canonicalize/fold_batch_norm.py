"""FoldBatchNorm: Conv/Linear → BatchNorm (eval) becomes one Conv/Linear. Exact."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.ir import call_sites, module_of
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.rewrite import MatchResult, Rule, apply_rules

# Which producers a BatchNorm of each kind can be folded into (the BN's channel dim must be
# the producer's output-channel dim).
FOLDABLE_PRODUCERS: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    nn.BatchNorm1d: (nn.Conv1d, nn.Linear),
    nn.BatchNorm2d: (nn.Conv2d,),
    nn.BatchNorm3d: (nn.Conv3d,),
}


@dataclass(frozen=True)
class ProducerNorm:
    producer: fx.Node
    norm: fx.Node


class FoldNormIntoProducer(Rule[ProducerNorm]):
    """Conv(W, b) → BN(γ, β, μ, σ²) ⇒ Conv(W·s, (b − μ)·s + β), s = γ / √(σ² + ε)."""

    description: ClassVar[str] = "Conv/Linear → BatchNorm ⇒ Conv/Linear with folded weights"

    def match(self, node: fx.Node, gm: fx.GraphModule) -> ProducerNorm | None:
        norm = module_of(gm, node)
        producers = FOLDABLE_PRODUCERS.get(type(norm))
        source = node.args[0] if node.args else None
        if producers is None or not isinstance(source, fx.Node):
            return None
        return ProducerNorm(source, node) if isinstance(module_of(gm, source), producers) else None

    def target(self, match: ProducerNorm) -> str:
        return str(match.producer.target)

    def check(self, match: ProducerNorm, gm: fx.GraphModule) -> MatchResult:
        norm = module_of(gm, match.norm)
        if norm.training:
            return MatchResult.fail(f"{match.norm.target} is in training mode (batch statistics)")
        if norm.running_mean is None or norm.running_var is None:
            return MatchResult.fail(f"{match.norm.target} keeps no running statistics")
        others = [u.name for u in match.producer.users if u is not match.norm]
        if others:
            return MatchResult.fail(
                f"its output is also used by {others}; folding would change them"
            )
        for node in (match.producer, match.norm):
            sites = call_sites(gm, node.target)
            if len(sites) > 1:
                return MatchResult.fail(f"module {node.target} is called at {len(sites)} places")
        shape = shape_of(match.producer)
        if isinstance(module_of(gm, match.producer), nn.Linear) and (
            shape is None or len(shape) != 2
        ):
            return MatchResult.fail(
                f"BatchNorm1d after a Linear with output shape {shape} normalises dim 1, "
                "not the Linear's features"
            )
        return MatchResult.ok()

    def rewrite(self, match: ProducerNorm, gm: fx.GraphModule) -> list[str]:
        producer, norm = module_of(gm, match.producer), module_of(gm, match.norm)
        gm.add_submodule(str(match.producer.target), fold_norm(producer, norm))
        match.norm.replace_all_uses_with(match.producer)
        gm.graph.erase_node(match.norm)
        gm.delete_submodule(str(match.norm.target))
        return [str(match.producer.target)]


def fold_norm(producer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``producer`` with ``norm`` (eval mode) folded into its weight and bias.

    Computed in float64 and cast back, so the fold adds no error beyond the final rounding.
    """
    weight = producer.weight.detach().double()
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale = scale * norm.weight.detach().double()
        shift = shift * norm.weight.detach().double() + norm.bias.detach().double()
    bias = producer.bias.detach().double() if producer.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(producer)
    dtype = producer.weight.dtype
    folded.weight = nn.Parameter((weight * scale.view(-1, *[1] * (weight.dim() - 1))).to(dtype))
    folded.bias = nn.Parameter((bias * scale + shift).to(dtype))
    return folded


class FoldBatchNorm(Pass):
    """Conv(+bias) → BatchNorm (eval) ⇒ one Conv; Linear → BatchNorm1d ⇒ one Linear. Exact.

    Declines, with the reason, BatchNorms in training mode, without running statistics, after
    a producer whose output has other users, or on modules called at several places.
    """

    name: ClassVar[str] = "fold_batch_norm"
    exact: ClassVar[bool] = True
    rules: ClassVar[tuple[Rule, ...]] = (FoldNormIntoProducer(),)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        outcome = apply_rules(gm, self.rules, self.selects)
        return PassResult(
            gm, outcome.modified, self.report(outcome.modified, outcome.touched, outcome.declined)
        )
