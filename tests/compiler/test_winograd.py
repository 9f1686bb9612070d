"""Winograd convolution: the matrices (numbers, exact in float64), which convolutions are
rewritten and what the module looks like after (structure), and that compiled Winograd
convolutions equal PyTorch on random shapes, odd channel counts and paddings (property)."""

from __future__ import annotations

import re
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.compiler.test_schedules import kernels, lowered, run_compiled

pytestmark = pytest.mark.tvm


def _correlate(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = d.shape[0] - g.shape[0] + 1
    return np.array([[np.sum(d[i : i + 3, j : j + 3] * g) for j in range(out)] for i in range(out)])


@pytest.mark.parametrize("m", [2, 4, 6])
def test_the_matrices_compute_a_3x3_correlation_exactly(m):
    from graphopt.compiler.relax.winograd import transform

    t = transform(m)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((t.alpha, t.alpha)), rng.standard_normal((3, 3))
    got = t.AT @ ((t.G @ g @ t.G.T) * (t.BT @ d @ t.BT.T)) @ t.AT.T
    np.testing.assert_allclose(got, _correlate(d, g), rtol=0, atol=1e-12)


def test_transformed_weights_are_the_per_channel_pair_products():
    from graphopt.compiler.relax.winograd import transform, transformed_weights

    t = transform(4)
    weight = np.random.default_rng(0).standard_normal((5, 3, 3, 7)).astype("float32")  # OHWI
    u = transformed_weights(weight, t)
    assert u.shape == (36, 7, 5)
    want = (t.G @ weight[2, :, :, 3].astype(np.float64) @ t.G.T).reshape(36)
    np.testing.assert_allclose(u[:, 3, 2], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("size", "c_in", "c_out", "tile"),
    [
        (56, 64, 64, 4),  # ResNet-18 layer 1
        (28, 128, 128, 4),
        (14, 256, 256, 2),  # F(4×4) weights would be 9.4 MB
        (7, 512, 512, None),  # too few tiles for weights that grow α²/9-fold
        (32, 16, 16, None),  # narrow
        (16, 32, 32, None),  # 2.4M multiply-adds: two extra launches cost what it saves
    ],
)
def test_the_tile_is_chosen_from_the_work_it_saves(size, c_in, c_out, tile):
    from graphopt.compiler.relax.winograd import choose_tile

    assert choose_tile(size, size, c_in, c_out) == tile


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x) + x)


def test_a_3x3_convolution_becomes_two_transforms_around_a_gemm_with_its_epilogue_fused():
    from graphopt.compiler.tir.schedules import SCHEDULE_ATTR

    found = kernels(lowered(Residual(64), torch.randn(1, 64, 32, 32)))
    rules = {name: str(f.attrs[SCHEDULE_ATTR]) for name, f in found.items()}
    assert not any("conv2d" in name for name in found)
    (inputs,) = (n for n in found if n.startswith("winograd_input"))
    (output,) = (n for n in found if "winograd_output" in n)
    (gemm,) = (n for n in found if n.startswith("matmul"))
    # bias, residual add and ReLU run inside the output transform
    assert output.startswith("fused_winograd_output_add") and output.count("add") == 2
    assert "relu" in output and not any(n.startswith(("add", "relu")) for n in found)
    assert rules[inputs] == rules[output] == "WinogradRule" and rules[gemm] == "ReductionRule"
    script = found[output].script()
    assert "T.parallel" in script and "T.vectorized" in script


def test_on_neon_the_transforms_use_four_lane_vectors():
    found = kernels(lowered(Residual(64), torch.randn(1, 64, 32, 32), target="aarch64"))
    for name in ("winograd_input", "fused_winograd_output"):
        script = next(f for n, f in found.items() if n.startswith(name)).script()
        lanes = set(re.findall(r"T\.vectorized\(T\.int64\((\d+)\)", script))
        assert lanes == {"4"}


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.Conv2d(64, 64, 3, padding=1, groups=2),
        nn.Conv2d(64, 64, 3, padding=2, dilation=2),
        nn.Conv2d(64, 64, 1),
    ],
    ids=["stride", "groups", "dilation", "1x1"],
)
def test_other_convolutions_stay_direct(conv):
    found = kernels(lowered(conv, torch.randn(1, 64, 32, 32)))
    assert not any("winograd" in name for name in found)
    assert any("conv2d" in name for name in found)


@st.composite
def winograd_convs(draw):
    c_in, c_out = draw(st.integers(3, 70)), draw(st.integers(3, 70))
    height, width = draw(st.integers(3, 30)), draw(st.integers(3, 30))
    padding = draw(st.sampled_from([0, 1, 2]))
    bias = draw(st.booleans())
    batch = draw(st.integers(1, 2))
    tile = draw(st.sampled_from([2, 4]))
    return nn.Conv2d(c_in, c_out, 3, padding=padding, bias=bias), (batch, c_in, height, width), tile


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(winograd_convs())
def test_winograd_convolutions_equal_pytorch(case):
    from graphopt.compiler.relax import winograd

    conv, shape, tile = case
    model = nn.Sequential(conv, nn.ReLU()).eval()
    torch.manual_seed(0)
    x = torch.randn(shape)
    # every drawn convolution is rewritten, whatever its size
    with mock.patch.object(winograd, "choose_tile", lambda *_: tile):
        assert any("winograd" in name for name in kernels(lowered(model, x)))
        got = run_compiled(model, x)
    with torch.no_grad():
        want = model(x).numpy()
    # F(4×4, 3×3) in float32: about 1e-6 of the output's scale per product, summed over C_in
    scale = float(np.abs(want).max()) + 1.0
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)


def test_the_kernel_report_tags_the_three_kernels_of_a_winograd_convolution():
    from graphopt.compiler.measure.kernels import kernel_report

    model = nn.Sequential(Residual(64), nn.Conv2d(64, 32, 1)).eval()  # the 1×1 stays direct
    report = kernel_report(model, torch.randn(1, 64, 32, 32), peak_gflops=100.0, repeats=1)
    tagged = sorted(k.name for k in report.kernels if k.winograd)
    assert len(tagged) == 3
    assert tagged[0].startswith("fused_winograd_output") and tagged[1].startswith("matmul")
    assert tagged[2].startswith("winograd_input")
    assert any("conv2d" in k.name and not k.winograd for k in report.kernels)


def test_compile_uses_winograd_unless_told_not_to_and_both_equal_pytorch():
    import graphopt
    from graphopt.compiler.build import export_program, lower_program
    from graphopt.compiler.targets import resolve_target

    torch.manual_seed(0)
    model, x = Residual(64).eval(), torch.randn(1, 64, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    for winograd in (True, False):
        mod, _ = lower_program(
            export_program(model, (x,)), resolve_target("llvm"), None, winograd=winograd
        )
        assert any("winograd" in name for name in kernels(mod)) == winograd
        got = graphopt.compile(model, x, tuning=None, winograd=winograd)(x.numpy())
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
