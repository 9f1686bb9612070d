"""Products padded to whole tiles (schedules/padding.py) and reshape indices simplified with
their bounds (schedules/loops.simplify_indices): what the kernels look like, that constants are
never padded, and numbers equal to PyTorch on hypothesis-drawn token counts (primes included)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.compiler.tir.schedules import TILE_ATTR
from tests.compiler.test_schedules import close_to_pytorch, kernels, lowered

pytestmark = pytest.mark.tvm


def _matmul(model, x):
    found = kernels(lowered(model.eval(), x))
    return [f for name, f in found.items() if "matmul" in name]


def _blocks(func) -> dict[str, str]:
    """Block name → the text of its ``with T.sblock`` body (up to the next block)."""
    script = func.script()
    parts = re.split(r'with T\.sblock\("(\w+)"\):', script)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_a_prime_token_count_pads_the_rows_and_crops_only_at_the_write_back():
    (kernel,) = _matmul(nn.Linear(96, 64), torch.randn(1, 197, 96))
    tile = str(kernel.attrs[TILE_ATTR])
    assert re.search(r"padded 197->(\d+)", tile), tile
    padded = int(re.search(r"padded 197->(\d+)", tile).group(1))
    rows = int(re.search(r"x (\d+) rows", tile).group(1))
    assert padded % rows == 0 and rows > 1 and padded - 197 < rows
    blocks = _blocks(kernel)
    update = next(body for name, body in blocks.items() if name.endswith("_update"))
    assert "T.where" not in update  # no predicate on the multiply-adds
    assert any("T.where" in body for body in blocks.values())  # the crop at the write-back
    assert any("if_then_else" in body for body in blocks.values())  # the zero-filled copy


def test_a_token_count_with_good_divisors_is_not_padded():
    (kernel,) = _matmul(nn.Linear(96, 64), torch.randn(1, 196, 96))
    assert "padded" not in str(kernel.attrs[TILE_ATTR])


def test_weights_are_never_padded_a_loop_they_index_keeps_its_extent():
    # 197 outputs: the vector loop indexes the constant weights, so it is not padded (that
    # copy would run at every call); the 64 rows divide well, so nothing is padded at all
    (kernel,) = _matmul(nn.Linear(96, 197), torch.randn(1, 64, 96))
    assert "padded" not in str(kernel.attrs[TILE_ATTR])


class Attention(nn.Module):
    """Scores and their product with the values: both operands are activations."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        scores = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return (scores @ v).transpose(1, 2).reshape(b, t, d)


def test_attention_scores_over_a_prime_token_count_pad_their_vector_loop():
    kernels_ = _matmul(Attention(64, 4), torch.randn(1, 37, 64))
    tiles = [str(f.attrs[TILE_ATTR]) for f in kernels_]
    # Q·Kᵀ: the key axis (37 wide) is the vector loop, padded to whole vectors
    assert any(re.search(r"padded 37->\d+ 37->\d+", t) for t in tiles), tiles
    assert all("/" in t and t.split("/")[0] == t.split("/")[1].split()[0] for t in tiles), tiles


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.sampled_from([5, 11, 13, 29, 37, 53, 97, 197]),
    features=st.sampled_from([8, 24, 33]),
    outputs=st.sampled_from([7, 16, 40]),
    act=st.sampled_from([nn.Identity(), nn.GELU(), nn.ReLU()]),
)
def test_padded_linear_layers_equal_pytorch(tokens, features, outputs, act):
    close_to_pytorch(nn.Sequential(nn.Linear(features, outputs), act), (1, tokens, features))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.sampled_from([7, 13, 29, 37, 61]), heads=st.sampled_from([1, 2, 4]))
def test_padded_attention_equals_pytorch(tokens, heads):
    close_to_pytorch(Attention(32, heads), (1, tokens, 32))


class Heads(nn.Module):
    """The attention's split into heads: reshape, transpose, reshape (a copy kernel)."""

    def forward(self, x):
        return x.reshape(1, 197, 12, 64).transpose(1, 2).reshape(12, 197, 64) * 2.0


def test_a_reshape_chain_reads_its_input_by_plain_indices():
    x = torch.randn(197, 768)
    (copy,) = (f for f in kernels(lowered(Heads(), x)).values())
    (reads,) = re.findall(r"T\.reads\((.*)\)", copy.script())
    # ((a·64 + b) // 768 + c) % 197, as legalized, simplifies to c with the loops' bounds
    assert "//" not in reads and "%" not in reads, reads
    close_to_pytorch(Heads(), (197, 768))
