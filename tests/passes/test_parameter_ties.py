"""Tied weights stay tied: every pass keeps a shared parameter shared or declines the layers
that hold it, with the reason; the pass manager catches a pass that unties silently."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import fx, nn

import graphopt
from graphopt.errors import VerificationError
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.passes import (
    ChannelPruning,
    DepthwiseSubstitution,
    FoldBatchNorm,
    LowRankFactorization,
    Net2NetDeepen,
    Net2NetShrink,
    Net2NetWiden,
)
from tests.models import randomize_batch_norm


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.bn_b = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(torch.relu(self.stem(x)))))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.head(x.mean(dim=(2, 3)))


PASSES = [
    FoldBatchNorm(),
    ChannelPruning(ratio=0.4),
    LowRankFactorization(rank_ratio=0.5),
    DepthwiseSubstitution(require_savings=False),
    Net2NetWiden(factor=2),
    Net2NetShrink(),
    Net2NetDeepen(),
]


@pytest.mark.parametrize("pass_", PASSES, ids=lambda p: p.name)
def test_a_conv_tie_survives_or_is_declined_with_a_reason(pass_):
    model = randomize_batch_norm(SharedConv()).eval()
    result = graphopt.optimize(model, torch.randn(1, 3, 8, 8), [pass_])
    gm = result.model
    assert gm.get_submodule("a").weight is gm.get_submodule("b").weight
    reasons = [d.reason for d in result.report.passes[0].declined]
    assert any("tied parameter" in r for r in reasons), reasons
    assert result.report.after.params == sum(p.numel() for p in gm.parameters())  # once


class _Untie(Pass):
    """x → x, but b gets a copy of the shared weight (what a careless pass would do)."""

    name: ClassVar[str] = "untie_for_test"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        b = gm.get_submodule("b")
        b.weight = nn.Parameter(b.weight.detach().clone())
        return PassResult(gm, True, self.report(True, ["b"]))


def test_the_pass_manager_catches_a_pass_that_unties():
    model = randomize_batch_norm(SharedConv()).eval()
    with pytest.raises(VerificationError, match=r"untied: a\.weight = b\.weight"):
        graphopt.optimize(model, torch.randn(1, 3, 8, 8), [_Untie()])


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers", reason="pip install '.[demo]'")
    from transformers.utils.fx import symbolic_trace

    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16, use_cache=False
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    gm = symbolic_trace(model, input_names=["input_ids"])
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    output.args = (result["logits"] if isinstance(result, dict) else result[0],)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


@pytest.mark.parametrize("pass_", PASSES, ids=lambda p: p.name)
def test_the_embedding_and_head_tie_of_a_language_model_survives(pass_):
    gm = _tiny_gpt2()
    result = graphopt.optimize(gm, torch.randint(0, 100, (1, 8)), [pass_])
    out = result.model
    assert out.get_submodule("lm_head").weight is out.get_submodule("transformer.wte").weight
    assert result.model(torch.randint(0, 100, (1, 8))).shape == (1, 8, 100)
