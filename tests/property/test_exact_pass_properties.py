"""Property tests: on random small graphs, exact passes keep the function and the shapes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.analysis.shapes import shape_of
from graphopt.passes import EliminateDeadCode, FoldBatchNorm, RemoveIdentity
from tests.models import randomize_batch_norm

LAYER = st.one_of(
    st.tuples(st.just("conv"), st.sampled_from([1, 3]), st.booleans(), st.sampled_from([4, 8])),
    st.tuples(st.just("bn")),
    st.tuples(st.just("relu")),
    st.tuples(st.just("identity")),
    st.tuples(st.just("dropout")),
    st.tuples(st.just("residual")),
    st.tuples(st.just("concat")),
)


class RandomNet(nn.Module):
    """A chain built from a list of layer specs; residual and concat add two-branch blocks."""

    def __init__(self, spec: list[tuple], channels: int = 4) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList()
        for item in spec:
            layer, channels = self._make(item, channels)
            self.layers.append(layer)

    @staticmethod
    def _make(item: tuple, c: int) -> tuple[nn.Module, int]:
        kind = item[0]
        if kind == "conv":
            _, k, bias, out = item
            return nn.Conv2d(c, out, k, padding=k // 2, bias=bias), out
        if kind in ("residual", "concat"):
            branch = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            return branch, (2 * c if kind == "concat" else c)
        return {
            "bn": nn.BatchNorm2d(c),
            "relu": nn.ReLU(),
            "identity": nn.Identity(),
            "dropout": nn.Dropout(0.3),
        }[kind], c

    def forward(self, x):
        for item, layer in zip(self.spec, self.layers, strict=True):
            if item[0] == "residual":
                x = x + layer(x)
            elif item[0] == "concat":
                x = torch.cat([x, layer(x)], dim=1)
            else:
                x = layer(x)
        return x


@settings(max_examples=30, deadline=None)
@given(spec=st.lists(LAYER, min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_exact_passes_preserve_function_and_shapes(spec, seed):
    torch.manual_seed(seed)
    model = randomize_batch_norm(RandomNet(spec), seed).eval()
    x = torch.randn(2, 4, 6, 6)
    result = graphopt.optimize(model, x, [FoldBatchNorm(), RemoveIdentity(), EliminateDeadCode()])

    gm = result.model
    gm.graph.lint()
    for node in gm.graph.nodes:
        if node.op not in ("output",):
            assert shape_of(node) is not None, node.format_node()
    with torch.no_grad():
        expected, actual = model(x), gm(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    kinds = [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]
    assert nn.Identity not in kinds and nn.Dropout not in kinds
    assert len(result.report.passes[0].touched) == expected_folds(spec)


def expected_folds(spec: list[tuple]) -> int:
    """Each branch's Conv→BN folds; so does every BN in a run right after a conv."""
    folds, after_conv = 0, False
    for item in spec:
        folds += item[0] in ("residual", "concat") or (item[0] == "bn" and after_conv)
        after_conv = item[0] == "conv" or (item[0] == "bn" and after_conv)
    return folds
