"""NaN and infinities flow through compiled ReLUs, clamps and max pools as through PyTorch's
(graphopt.compiler.relax.nan_semantics): TVM's own lowering returned 0 for relu(NaN), 6 for
relu6(NaN) and dropped a NaN from a max pool's window."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from tests.compiler.test_schedules import parallel_ir
from tests.models import randomize_batch_norm

pytestmark = pytest.mark.tvm


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.clamp(x, -0.5, 0.25)


MODELS = {
    "relu": lambda: nn.Sequential(nn.ReLU()),
    "relu6": lambda: nn.Sequential(nn.ReLU6()),
    "hardtanh": lambda: nn.Sequential(nn.Hardtanh(-2.0, 2.0)),
    "clamp": lambda: nn.Sequential(_Clamp()),
    "max_pool": lambda: nn.Sequential(nn.MaxPool2d(2)),
    "max_pool_padded_ceil": lambda: nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    "sigmoid": lambda: nn.Sequential(nn.Sigmoid()),
    "gelu": lambda: nn.Sequential(nn.GELU()),
    "softmax_channels": lambda: nn.Sequential(nn.Softmax(dim=1)),
    "softmax_rows": lambda: nn.Sequential(nn.Softmax(dim=-1)),
    "conv_silu": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()),
    # convolutions run channels-last, the activations fused into their kernels
    "conv_bn_relu_pool": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
    ),
    "conv_relu6_linear_relu": lambda: nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 9 * 9, 5), nn.ReLU()
    ),
}


def _with(value: float, *at: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    for index in at:
        x[index] = value
    return x


def _same(got, want) -> None:
    got = torch.as_tensor(got[0] if isinstance(got, list | tuple) else got)
    np.testing.assert_array_equal(got.isnan().numpy(), want.isnan().numpy())
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)


def _gelu_formula(x: torch.Tensor) -> torch.Tensor:
    """``x · (1 + erf(x/√2)) / 2`` in float64: inf at +inf, NaN at −inf. PyTorch's own answer
    at +inf depends on the CPU (NaN from its AVX-512 erf, inf from the AVX2 one)."""
    x = x.double()
    return (x * (1 + torch.erf(x / 2**0.5)) / 2).float()


@pytest.mark.parametrize("name", MODELS)
def test_non_finite_inputs_come_out_as_from_pytorch(name):
    torch.manual_seed(0)
    model = randomize_batch_norm(MODELS[name]()).eval()
    artifact = graphopt.compile(model, _with(0.0), tuning=None)
    for value in (float("nan"), float("inf"), float("-inf")):
        x = _with(value, (0, 0, 2, 2), (0, 2, 8, 8))
        with torch.no_grad():
            want = _gelu_formula(x) if name == "gelu" else model(x)
        if value != value:
            assert want.isnan().any(), "the NaN must reach the output"
        _same(artifact(x), want)


@settings(max_examples=6, deadline=None)
@given(
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    ceil=st.booleans(),
    pad=st.integers(0, 1),
    size=st.tuples(st.integers(5, 9), st.integers(5, 9)),
)
def test_max_pool_windows_match_pytorch(kernel, stride, dilation, ceil, pad, size):
    pad = min(pad, kernel // 2)  # PyTorch's limit
    model = nn.Sequential(nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=ceil)).eval()
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(1))
    artifact = graphopt.compile(model, x, tuning=None)
    x[0, 1, 2, 3] = float("nan")
    _same(artifact(x), model(x))


def test_sigmoid_is_accurate_over_the_whole_float_range():
    """The compiled sigmoid uses a polynomial exp (vectorised; libm's expf is not): within
    5e-7 relative of PyTorch's (4 float32 ulps), and saturating like it far out."""
    model = nn.Sequential(nn.Sigmoid()).eval()
    x = torch.cat([torch.linspace(-120, 120, 4801), torch.randn(199) * 5]).reshape(1, 5000)
    artifact = graphopt.compile(model, x, tuning=None)
    got, want = torch.as_tensor(artifact(x)), torch.sigmoid(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=5e-7, atol=1e-37)


def test_gelu_is_accurate_over_the_whole_float_range():
    """The compiled GELU uses a rational erf (vectorised): within 1e-6 absolute of PyTorch's."""
    model = nn.Sequential(nn.GELU()).eval()
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.randn(999) * 3]).reshape(1, 5000)
    artifact = graphopt.compile(model, x, tuning=None)
    got, want = torch.as_tensor(artifact(x)), torch.nn.functional.gelu(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_softmax_is_accurate_over_wide_logits_and_masks():
    """The compiled softmax uses a polynomial exp: against a float64 softmax, for logits spread
    over ±400, within 1.25× the error of PyTorch's own float32 softmax (float32 logits 30 below
    the row's maximum already carry 2e-6 of relative error into exp; measured 4.1e-6 against
    PyTorch's 3.9e-6), masked (−inf) entries 0."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, 64, generator=g) * torch.tensor([1.0, 10.0, 40.0, 100.0])[:, None, None]
    x[:, :, 40:] = float("-inf")  # an attention mask
    model = nn.Sequential(nn.Softmax(dim=-1)).eval()
    artifact = graphopt.compile(model, x, tuning=None)
    got, exact = torch.as_tensor(artifact(x)), torch.softmax(x.double(), -1)
    assert bool((got[:, :, 40:] == 0).all())

    def error(y):
        normal = exact > 1e-37  # float32 subnormals have fewer digits
        return float(((y.double() - exact).abs()[normal] / exact[normal]).max())

    assert error(got) <= 1.25 * max(error(torch.softmax(x, -1)), 1e-6)


@pytest.mark.parametrize("act", [nn.SiLU(), nn.Sigmoid(), nn.GELU()])
def test_an_activation_epilogue_runs_whole_vectors(act):
    """NaN is kept by the arithmetic itself, not by an ``isnan`` select around it: TVM's
    vectoriser ran a convolution's sigmoid or GELU epilogue holding one a float at a time
    (10× the convolution)."""
    ir = parallel_ir(nn.Sequential(nn.Conv2d(8, 16, 1), act), torch.randn(1, 8, 8, 8), "conv2d")
    assert re.search(r"fmul( fast)? <\d+ x float>", ir), ir
    assert not re.search(r"select i1 \S+, float", ir), ir
    assert not re.search(r"fdiv( fast)? float", ir), ir


def test_a_max_pool_keeps_nan_with_whole_vectors():
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.MaxPool2d(3, 2))
    ir = parallel_ir(model, torch.randn(1, 8, 9, 9), "max_pool")
    assert re.search(r"llvm.maximum.v\d+f32", ir) and not re.search(r"select i1 \S+, float", ir), ir
