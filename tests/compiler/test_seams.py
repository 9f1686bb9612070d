"""Kernels that read a concatenation run one vector loop per input (schedules/seams.py), and a
BatchNorm no convolution absorbs becomes one multiply-add (relax/fold.py): structure, numbers
against PyTorch, and hypothesis-drawn concatenations."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered, parallel_ir
from tests.models import randomize_batch_norm

pytestmark = pytest.mark.tvm


class DenseBlock(nn.Module):
    """DenseNet's pattern: every layer reads BN → ReLU of the concatenation of all before it."""

    def __init__(self, channels: int, growth: int, layers: int):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(channels + i * growth),
                nn.ReLU(),
                nn.Conv2d(channels + i * growth, growth, 1),
            )
            for i in range(layers)
        )

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def _concat_kernel(model, x, inputs: int) -> str:
    found = kernels(lowered(randomize_batch_norm(model).eval(), x))
    name = next(
        n
        for n, f in found.items()
        if "concatenate" in n and "relu" in n and len(f.params) == inputs + 3
    )
    return found[name].script()


def test_each_concatenated_input_gets_its_own_vector_loop():
    """The third layer reads 16 + 8 + 8 channels: three loops of 8-lane vectors (AVX2 and
    AVX-512 alike: 8 divides every seam)."""
    script = _concat_kernel(DenseBlock(16, 8, 3), torch.randn(1, 3, 6, 6), inputs=3)
    assert script.count("T.vectorized(T.int64(8))") == 3, script
    assert script.count("_partition") == 3, script
    assert script.count("T.parallel") == 1, script


def test_the_built_kernel_runs_whole_vectors():
    """Before, TVM's vectoriser gave up on the chain of tests and ran the loop one float at a
    time (the ReLU a scalar ``select i1 … float``)."""
    model = randomize_batch_norm(DenseBlock(16, 8, 3))
    body = parallel_ir(model, torch.randn(1, 3, 6, 6), "concatenate2")
    assert re.search(r"select <\d+ x i1>", body), body
    assert not re.search(r"select i1 \S+, float", body), body


def test_an_unfolded_batch_norm_is_one_multiply_add():
    found = kernels(
        lowered(randomize_batch_norm(DenseBlock(8, 4, 2)).eval(), torch.randn(1, 3, 5, 5))
    )
    after_concat = [n for n in found if "concatenate" in n and "relu" in n]
    assert after_concat and all("multiply" in n and "divide" not in n for n in after_concat), found
    assert not any("subtract" in n or "divide" in n for n in found), sorted(found)


@pytest.mark.parametrize(("channels", "growth"), [(16, 8), (6, 2), (5, 3)])
def test_a_dense_block_equals_pytorch(channels, growth):
    """Seams on whole 8-lane vectors, on 2-lane vectors, and on odd offsets (no vectors)."""
    close_to_pytorch(randomize_batch_norm(DenseBlock(channels, growth, 3)), (1, 3, 7, 5))


class Concat(nn.Module):
    def __init__(self, widths: list[int], pool: bool):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(4, w, 1) for w in widths)
        self.after = nn.MaxPool2d(3, 1, padding=1) if pool else nn.ReLU()

    def forward(self, x):
        return self.after(torch.cat([b(x) for b in self.branches], 1))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([1, 3, 8, 12, 16, 24]), min_size=2, max_size=4),
    st.booleans(),
    st.sampled_from([3, 6]),
)
def test_any_channel_concatenation_and_what_follows_equal_pytorch(widths, pool, size):
    close_to_pytorch(Concat(widths, pool), (1, 4, size, size))
