"""Every built-in pass on generated graphs, judged independently of the pass manager's checks.

A run is one of:

- ``ok``: the pass ran; the output shape is the original's, and for an exact pass the outputs
  agree within ``EXACT_TOLERANCE`` (relative), compared on fresh copies of the inputs;
- ``refused``: a typed graphopt error (a decline, a verification failure): the safety net;
  a ``PassError`` wrapping an untyped exception is a bug in the pass and counts as ``crashed``;
- ``silently wrong``: the pass returned a model that breaks the contract above;
- ``crashed``: any other exception.

The CI property test runs a few graphs per pass; ``bench/fuzz_passes.py`` runs 1,000 per pass
and commits the counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

import graphopt
from graphopt.errors import GraphOptError, PassError
from graphopt.passes import (
    BatchNormRecalibration,
    ChannelPruning,
    DepthwiseSubstitution,
    EliminateDeadCode,
    FoldBatchNorm,
    KnowledgeDistillation,
    LayerwiseReconstruction,
    LowRankFactorization,
    Net2NetDeepen,
    Net2NetShrink,
    Net2NetWiden,
    RemoveIdentity,
)
from tests.models import randomize_batch_norm
from tests.property.test_pruning_properties import BLOCKS, RandomNet

EXACT_TOLERANCE = 1e-4
KINDS = tuple(BLOCKS.elements)
INPUT_SHAPE = (2, 3, 6, 6)

# one configuration per built-in pass, the way a user would first try it
PASSES = {
    "fold_batch_norm": FoldBatchNorm,
    "remove_identity": RemoveIdentity,
    "eliminate_dead_code": EliminateDeadCode,
    "channel_pruning": lambda: ChannelPruning(ratio=0.5),
    "low_rank_factorization": lambda: LowRankFactorization(rank_ratio=0.5),
    "depthwise_substitution": lambda: DepthwiseSubstitution(require_savings=False),
    "net2net_widen": lambda: Net2NetWiden(factor=1.5),
    "net2net_deepen": Net2NetDeepen,
    "net2net_shrink": Net2NetShrink,
    "batch_norm_recalibration": lambda: BatchNormRecalibration(batches=2),
    "layerwise_reconstruction": lambda: LayerwiseReconstruction(batches=2),
    "knowledge_distillation": lambda: KnowledgeDistillation(steps=2),
}


@dataclass(frozen=True)
class Outcome:
    verdict: str  # ok | refused | silently wrong | crashed
    detail: str = ""


class TiedTail(torch.nn.Module):
    """A generated net, then two 1×1 convolutions sharing one weight (a parameter tie)."""

    def __init__(self, net: RandomNet) -> None:
        super().__init__()
        self.net = net
        width = net.head.in_features
        self.tail_a = torch.nn.Conv2d(width, width, 1)
        self.tail_b = torch.nn.Conv2d(width, width, 1)
        self.tail_b.weight = self.tail_a.weight

    def forward(self, x):
        x = self.net.blocks(self.net.stem(x))
        x = self.tail_b(torch.relu(self.tail_a(x)))
        return self.net.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def random_model(kinds: list[str], seed: int, tied: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = randomize_batch_norm(RandomNet(kinds), seed)
    return (TiedTail(net) if tied else net).eval()


def random_kinds(rng: random.Random, most: int = 6) -> list[str]:
    return [rng.choice(KINDS) for _ in range(rng.randint(1, most))]


def run_pass(name: str, model: torch.nn.Module, seed: int) -> Outcome:
    """Run the pass ``name`` on ``model`` and judge the result (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(INPUT_SHAPE, generator=generator)
    batches = [torch.randn(INPUT_SHAPE, generator=generator) for _ in range(2)]
    pass_ = PASSES[name]()
    try:
        with torch.no_grad():
            want = model(x.clone())
        result = graphopt.optimize(
            model, x.clone(), [pass_], calibration_data=batches, training_data=batches, seed=seed
        )
        with torch.no_grad():
            got = result.model(x.clone())
    except GraphOptError as exc:
        cause = exc.__cause__
        if isinstance(exc, PassError) and not isinstance(cause, GraphOptError):
            return Outcome("crashed", f"in the pass: {type(cause).__name__}: {cause}"[:300])
        return Outcome("refused", f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # noqa: BLE001 - what the matrix counts
        return Outcome("crashed", f"{type(exc).__name__}: {exc}"[:300])
    if got.shape != want.shape:
        return Outcome("silently wrong", f"output shape {tuple(got.shape)} != {tuple(want.shape)}")
    if pass_.exact:
        error = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
        if error > EXACT_TOLERANCE:
            return Outcome("silently wrong", f"exact pass changed outputs by {error:.2e}")
    if isinstance(model, TiedTail):
        tail_a, tail_b = result.model.get_submodule("tail_a"), result.model.get_submodule("tail_b")
        if tail_a.weight is not tail_b.weight:
            return Outcome("silently wrong", "the tail's shared weight was untied")
    return Outcome("ok")
