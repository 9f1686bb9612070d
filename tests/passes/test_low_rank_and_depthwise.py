"""LowRankFactorization and DepthwiseSubstitution: structure, exactness at full rank, error
that grows as rank drops, declines with reasons, config validation, export."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

import graphopt
from graphopt.analysis.factorize import RankRule, vbmf_rank
from graphopt.errors import ConfigError
from graphopt.passes import DepthwiseSubstitution, LowRankFactorization


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2)
        self.conv2 = nn.Conv2d(16, 16, (3, 5), padding=(1, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


X = torch.randn(2, 8, 12, 12)


def model():
    torch.manual_seed(0)
    return Net().eval()


def error(result, reference, x=X):
    with torch.no_grad():
        return ((result.model(x) - reference(x)).norm() / reference(x).norm()).item()


@pytest.mark.parametrize("scheme", ["channel", "tucker2", "spatial"])
def test_full_rank_is_exact(scheme):
    m = model()
    result = graphopt.optimize(
        m, X, [LowRankFactorization(scheme=scheme, rank_ratio=1.0, require_savings=False)]
    )
    assert error(result, m) < 1e-5
    torch.export.export(result.model, (X,))


def test_structure_channel_scheme():
    result = graphopt.optimize(model(), X, [LowRankFactorization(rank=4, require_savings=False)])
    gm = result.model
    first, second = gm.get_submodule("conv.0"), gm.get_submodule("conv.1")
    assert (first.in_channels, first.out_channels, first.kernel_size) == (8, 4, (3, 3))
    assert (first.stride, first.padding, first.dilation) == ((2, 2), (2, 2), (2, 2))
    assert (second.out_channels, second.kernel_size, second.bias is not None) == (16, (1, 1), True)
    assert gm.get_submodule("fc.0").out_features == 4 and gm.get_submodule("fc.0").bias is None
    assert "conv_0 = self.conv.0(x)" in gm.code or 'getattr(self.conv, "0")' in gm.code


def test_structure_tucker2_and_spatial():
    gm = graphopt.optimize(
        model(),
        X,
        [
            LowRankFactorization(
                scheme="tucker2", rank=4, require_savings=False, module_types=["Conv2d"]
            )
        ],
    ).model
    assert [gm.get_submodule(f"conv.{i}").kernel_size for i in range(3)] == [(1, 1), (3, 3), (1, 1)]
    gm = graphopt.optimize(
        model(),
        X,
        [
            LowRankFactorization(
                scheme="spatial", rank=4, require_savings=False, module_types=["Conv2d"]
            )
        ],
    ).model
    vertical, horizontal = gm.get_submodule("conv2.0"), gm.get_submodule("conv2.1")
    assert vertical.kernel_size == (3, 1) and horizontal.kernel_size == (1, 5)
    assert vertical.padding == (1, 0) and horizontal.padding == (0, 2)


@pytest.mark.parametrize("scheme", ["channel", "tucker2", "spatial"])
def test_error_grows_as_rank_drops(scheme):
    m = model()
    errors = [
        error(
            graphopt.optimize(
                m, X, [LowRankFactorization(scheme=scheme, rank_ratio=r, require_savings=False)]
            ),
            m,
        )
        for r in (1.0, 0.6, 0.3, 0.1)
    ]
    assert errors[0] < 1e-5
    assert errors == sorted(errors)


def test_declines_when_factors_are_not_smaller():
    report = graphopt.optimize(model(), X, [LowRankFactorization(rank_ratio=1.0)]).report.passes[0]
    assert not report.modified
    assert {d.target for d in report.declined} == {"conv", "conv2", "fc"}
    assert "not smaller" in report.declined[0].reason


def test_grouped_convs_are_declined():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 3))
    report = graphopt.optimize(m, X, [LowRankFactorization(rank=1)]).report.passes[0]
    assert any(d.target == "0" and "grouped" in d.reason for d in report.declined)


def test_ratio_targets_model_macs():
    m = model()
    result = graphopt.optimize(m, X, [LowRankFactorization(ratio=0.3)])
    assert result.report.after.macs <= 0.7 * result.report.before.macs
    assert result.report.after.macs > 0.4 * result.report.before.macs


def test_whiten_lowers_output_error_on_the_calibration_distribution():
    m = model()
    scale = torch.ones(1, 8, 1, 1)
    scale[:, :2] = 20.0  # two input channels dominate the activations
    batches = [torch.randn(8, 8, 12, 12) * scale for _ in range(4)]
    x = torch.randn(16, 8, 12, 12) * scale
    plain = graphopt.optimize(
        m, X, [LowRankFactorization(rank=3, module_types=["Conv2d"])], calibration_data=batches
    )
    whitened = graphopt.optimize(
        m,
        X,
        [LowRankFactorization(rank=3, whiten=True, module_types=["Conv2d"])],
        calibration_data=batches,
    )
    assert error(whitened, m, x) < error(plain, m, x)
    assert "relative output error" in whitened.report.passes[0].notes[0]
    assert (
        whitened.report.passes[0].metrics["mean_relative_output_error"]
        < plain.report.passes[0].metrics["mean_relative_output_error"]
    )


def test_whiten_needs_calibration_data():
    with pytest.raises(ConfigError, match="calibration_data"):
        graphopt.optimize(model(), X, [LowRankFactorization(rank=2, whiten=True)])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(rank=2, energy=0.9),
        dict(rank_method="vbmf", rank=2),
        dict(rank=0),
        dict(energy=1.5),
        dict(rank=2, scheme="cp"),
        dict(rank=2, whiten=True, scheme="spatial"),
    ],
)
def test_invalid_configs(kwargs):
    with pytest.raises(pydantic.ValidationError):
        LowRankFactorization(**kwargs)


def test_vbmf_recovers_a_planted_rank():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(60, 6, generator=g) @ torch.randn(6, 90, generator=g)
    noisy = (signal + 0.05 * torch.randn(60, 90, generator=g)).double().numpy()
    import numpy as np

    s = np.linalg.svd(noisy, compute_uv=False)
    assert vbmf_rank(s, noisy.shape) == 6
    assert RankRule("energy", 0.5).pick(s, noisy.shape) <= 6


def test_depthwise_exact_with_enough_multiplier_and_lossy_below():
    m = model()
    exact = graphopt.optimize(
        m, X, [DepthwiseSubstitution(multiplier=9, require_savings=False, include=["conv"])]
    )
    assert error(exact, m) < 1e-5
    dw, pw = exact.model.get_submodule("conv.0"), exact.model.get_submodule("conv.1")
    assert (dw.groups, dw.out_channels, dw.stride, dw.dilation) == (8, 72, (2, 2), (2, 2))
    assert pw.kernel_size == (1, 1) and pw.out_channels == 16
    errors = [
        error(
            graphopt.optimize(
                m, X, [DepthwiseSubstitution(multiplier=k, require_savings=False, include=["conv"])]
            ),
            m,
        )
        for k in (9, 4, 1)
    ]
    assert errors == sorted(errors) and errors[-1] > 1e-3
    report = exact.report.passes[0]
    assert report.metrics["mean_relative_kernel_error"] < 1e-6


def test_depthwise_declines_with_reasons():
    m = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 3))
    report = graphopt.optimize(m, X, [DepthwiseSubstitution(multiplier=9)]).report.passes[0]
    reasons = {d.target: d.reason for d in report.declined}
    assert (
        "1×1" in reasons["0"]
        and "grouped" in reasons["1"]
        and "MACs would not drop" in reasons["2"]
    )


def test_passes_run_from_a_recipe_and_the_result_exports():
    from pathlib import Path

    from graphopt.runner import run_recipe

    recipe = graphopt.parse_recipe(
        "model: {python: 'tests.models:conv_bn_model'}\ninputs: [{shape: [1, 3, 16, 16]}]\n"
        "passes:\n  - pass: fold_batch_norm\n  - pass: depthwise_substitution\n    multiplier: 2\n"
        "    include: ['1.conv1']\n  - pass: low_rank_factorization\n    energy: 0.8\n"
        "    require_savings: false\n"
    )
    assert [p.name for p in recipe.passes] == [
        "fold_batch_norm",
        "depthwise_substitution",
        "low_rank_factorization",
    ]
    result = run_recipe(recipe, Path(__file__).resolve().parents[2])
    assert result.report.passes[1].touched == ["1.conv1.0", "1.conv1.1"]
    assert result.report.passes[2].modified
    x = recipe.example_inputs()[0]
    torch.export.export(result.model, (x,))
    retraced = torch.fx.symbolic_trace(result.model)
    torch.testing.assert_close(retraced(x), result.model(x))


def test_depthwise_config_validation():
    with pytest.raises(pydantic.ValidationError):
        DepthwiseSubstitution(multiplier=0)
    with pytest.raises(pydantic.ValidationError):
        DepthwiseSubstitution(rank=2)


def test_param_ratio_keeps_that_share_of_each_layers_parameters():
    m = model()
    result = graphopt.optimize(
        m, X, [LowRankFactorization(param_ratio=0.5, module_types=["Linear"])]
    )
    first, second = result.model.get_submodule("fc.0"), result.model.get_submodule("fc.1")
    assert first.out_features == int(0.5 * 16 * 10 / 26)
    assert first.weight.numel() + second.weight.numel() <= 0.5 * 16 * 10


@pytest.mark.parametrize("method,value", [("rank", 3), ("energy", 0.5), ("rank_ratio", 0.3)])
def test_round_to_rounds_ranks_up_to_a_multiple_capped_at_full_rank(method, value):
    s = np.linspace(5, 0.1, 16)
    plain = RankRule(method, value).pick(s, (16, 16))
    rounded = RankRule(method, value, round_to=8).pick(s, (16, 16))
    assert rounded % 8 == 0 and plain <= rounded < plain + 8
    assert RankRule("rank", 15, round_to=8).pick(s, (16, 16)) == 16  # capped at the full rank
    result = graphopt.optimize(
        model(), X, [LowRankFactorization(rank=3, round_to=4, require_savings=False)]
    )
    assert result.model.get_submodule("conv.0").out_channels == 4
    assert result.model.get_submodule("fc.0").out_features == 4
