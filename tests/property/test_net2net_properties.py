"""Property: on random graphs of coupled-channel blocks, Net2NetWiden (any factor) is exact and
Net2NetShrink undoes it (same parameter count, same outputs); groups widening cannot handle
exactly are declined, never silently changed."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphopt
from graphopt.passes import Net2NetShrink, Net2NetWiden
from tests.property.test_pruning_properties import BLOCKS, RandomNet, X


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(BLOCKS, min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    factor=st.floats(1.1, 3.0),
)
def test_widen_then_shrink_is_the_identity(kinds, seed, factor):
    torch.manual_seed(seed)
    model = RandomNet(kinds).eval()
    passes = [Net2NetWiden(factor=factor), Net2NetShrink(depth=False)]
    result = graphopt.optimize(model, X, passes, seed=seed)
    widen, shrink = result.report.passes
    assert widen.verification.max_rel_error <= 1e-5
    assert shrink.verification.max_rel_error <= 1e-5
    assert result.report.after == result.report.before
    with torch.no_grad():
        want = model(X)
        assert torch.allclose(result.model(X), want, atol=1e-5 * float(want.abs().max()))
