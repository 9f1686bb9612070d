"""Property: every built-in pass, on generated graphs of coupled-channel blocks, either refuses
with a typed error or returns a model with the right output shape (and, for exact passes, the
same outputs). Never silently wrong, never an untyped crash. 1,000 graphs per pass:
``bench/fuzz_passes.py``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.property.pass_matrix import KINDS, PASSES, random_model, run_pass


@pytest.mark.parametrize("name", sorted(PASSES))
@settings(max_examples=6, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6), seed=st.integers(0, 9999))
def test_pass_is_never_silently_wrong(name, kinds, seed):
    outcome = run_pass(name, random_model(kinds, seed), seed)
    assert outcome.verdict in ("ok", "refused"), f"{name} on {kinds}: {outcome}"


@pytest.mark.parametrize("name", sorted(PASSES))
@settings(max_examples=3, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4), seed=st.integers(0, 9999))
def test_pass_keeps_parameter_ties(name, kinds, seed):
    outcome = run_pass(name, random_model(kinds, seed, tied=True), seed)
    assert outcome.verdict in ("ok", "refused"), f"{name} on {kinds} + tied tail: {outcome}"


def test_low_rank_of_a_conv_feeding_a_conv():
    """Regression: the second conv's input was the first's new chain, which had no shape."""
    outcome = run_pass("low_rank_factorization", random_model(["pad", "conv"], 0), 0)
    assert outcome.verdict == "ok", outcome
