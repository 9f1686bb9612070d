"""Net2Net passes: widen and deepen preserve the function exactly; shrink undoes them and merges
(near-)duplicate or collinear units; declines say why."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import graphopt
from graphopt.passes import Net2NetDeepen, Net2NetShrink, Net2NetWiden
from tests.models import randomize_batch_norm

TOLERANCE = 1e-5


def mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(),
        nn.Linear(12, 3),
    )  # fmt: skip
    return randomize_batch_norm(model).eval()


def relative_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = a(x)
        return float((b(x) - want).abs().max() / want.abs().max())


def widths(gm) -> list[tuple[str, int, int]]:
    return [
        (n, m.in_features, m.out_features)
        for n, m in gm.named_modules()
        if isinstance(m, nn.Linear)
    ]


@pytest.fixture(scope="module")
def resnet18(torchvision_models):
    torch.manual_seed(0)
    return randomize_batch_norm(torchvision_models.resnet18(num_classes=10)).eval()


# ------------------------------------------------------------------------------ widen


def test_widen_grows_every_group_consistently_and_exactly():
    model, x = mlp(), torch.randn(5, 10)
    result = graphopt.optimize(model, x, [Net2NetWiden(factor=1.5)])
    assert widths(result.model) == [("0", 10, 24), ("2", 24, 18), ("5", 18, 3)]
    assert result.model.get_submodule("3").num_features == 18
    assert result.model.get_submodule("3").running_var.shape == (18,)
    report = result.report.passes[0]
    assert report.exact and report.verification.max_rel_error <= TOLERANCE
    assert relative_error(model, result.model, x) <= TOLERANCE
    assert [d.reason for d in report.declined] == ["frozen: _5.dim1: model output"]


def test_widen_is_exact_on_resnet18(resnet18):
    x = torch.randn(1, 3, 32, 32)
    result = graphopt.optimize(resnet18, x, [Net2NetWiden(factor=1.25)])
    assert result.report.after.params > 1.4 * result.report.before.params
    assert result.model.get_submodule("layer1.0.conv1").out_channels == 80
    assert result.model.get_submodule("layer1.0.conv1").in_channels == 80  # residual stream too
    assert relative_error(resnet18, result.model, x) <= TOLERANCE


def test_widen_noise_breaks_symmetry_only_on_the_copies():
    model, x = mlp(), torch.randn(5, 10)
    widen = Net2NetWiden(factor=2.0, noise=0.1)
    assert not widen.is_exact()
    result = graphopt.optimize(model, x, [widen])
    assert not result.report.passes[0].exact
    new, old = result.model.get_submodule("0").weight, model.get_submodule("0").weight
    exact = [i for i in range(32) if any(torch.equal(new[i], old[j]) for j in range(16))]
    assert len(exact) == 16  # the original units are untouched, every copy is perturbed
    assert relative_error(model, result.model, x) > 1e-4


def test_widen_declines_what_copying_cannot_preserve():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)
            self.c = nn.Conv2d(3, 4, 1)
            self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.d = nn.Conv2d(4, 2, 1)

        def forward(self, x, image):
            return self.b(self.norm(self.a(x))), self.d(self.g(self.c(image)))

    x, image = torch.randn(2, 4), torch.randn(1, 3, 5, 5)
    result = graphopt.optimize(Mixed().eval(), (x, image), [Net2NetWiden()])
    reasons = " | ".join(d.reason for d in result.report.passes[0].declined)
    assert "LayerNorm normalises across units" in reasons
    assert "grouped convolution" in reasons


def test_widen_config_is_validated():
    for bad in ({"factor": 1.0}, {"factor": 20}, {"noise": -0.1}, {"fraction": 2}):
        with pytest.raises(ValidationError):
            Net2NetWiden(**bad)


# ------------------------------------------------------------------------------ shrink


@pytest.mark.parametrize("model_name", ["mlp", "resnet18"])
def test_widen_then_shrink_is_the_original_network(model_name, request):
    if model_name == "mlp":
        model, x = mlp(), torch.randn(5, 10)
    else:
        model, x = request.getfixturevalue("resnet18"), torch.randn(1, 3, 32, 32)
    result = graphopt.optimize(model, x, [Net2NetWiden(factor=1.5), Net2NetShrink()])
    assert result.report.after == result.report.before  # same params and MACs
    assert result.report.passes[1].exact
    assert result.report.passes[1].metrics["units_merged"] > 0
    assert relative_error(model, result.model, x) <= TOLERANCE


def test_near_duplicates_merge_within_tolerance_and_report_the_error():
    model, x = mlp(), torch.randn(64, 10)
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[3] * (1 + 1e-4)
        model[0].bias[5] = model[0].bias[3] * (1 + 1e-4)
    exact = graphopt.optimize(model, x, [Net2NetShrink(depth=False)])
    assert not exact.report.passes[0].modified
    near = graphopt.optimize(model, x, [Net2NetShrink(tolerance=1e-3, depth=False)])
    report = near.report.passes[0]
    assert not report.exact and report.metrics["units_merged"] == 1
    assert near.model.get_submodule("0").out_features == 15
    assert 0 < report.metrics["relative_output_change"] < 1e-3


def test_collinear_and_dead_units_merge_on_activations():
    model, x = mlp(), torch.randn(64, 10)
    with torch.no_grad():
        model[0].weight[7] = 2.5 * model[0].weight[2]  # ReLU(2.5·z) = 2.5·ReLU(z)
        model[0].bias[7] = 2.5 * model[0].bias[2]
        model[0].weight[9] = 0.0  # a dead unit
        model[0].bias[9] = -1.0
        hidden = torch.relu(model[3](model[2](torch.relu(model[0](x)))))
    dead_later = int((hidden.abs().sum(0) == 0).sum())  # units ReLU kills on all of x
    shrink = Net2NetShrink(criterion="activations", tolerance=1e-6, depth=False)
    result = graphopt.optimize(model, x, [shrink], calibration_data=[x])
    report = result.report.passes[0]
    assert result.model.get_submodule("0").out_features == 14  # unit 7 into 2, unit 9 gone
    assert result.model.get_submodule("2").out_features == 12 - dead_later
    assert report.metrics["units_merged"] == 2 + dead_later
    assert report.metrics["relative_output_change"] <= TOLERANCE


def test_target_ratio_reaches_the_requested_width():
    model, x = mlp(), torch.randn(8, 10)
    result = graphopt.optimize(model, x, [Net2NetShrink(target_ratio=0.5, depth=False)])
    assert widths(result.model) == [("0", 10, 8), ("2", 8, 6), ("5", 6, 3)]
    assert result.report.passes[0].metrics["relative_output_change"] > 0


def test_depth_shrink_fuses_linear_pairs_only_when_cheaper():
    # 8→16→4 costs 192 MACs, fused 8→4 costs 32; 4→2→4 costs 16 and fused 16: kept
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2),
                          nn.Linear(2, 4))  # fmt: skip
    x = torch.randn(3, 8)
    result = graphopt.optimize(model.eval(), x, [Net2NetShrink()])
    report = result.report.passes[0]
    assert "0: fused with the linear map after it" in report.notes
    assert "fusing with 4 would not lower MACs" in [d.reason for d in report.declined]
    assert widths(result.model) == [("0", 8, 4), ("3", 4, 2), ("4", 2, 4)]
    assert relative_error(model, result.model, x) <= TOLERANCE


def test_depth_shrink_fuses_pointwise_after_conv():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    result = graphopt.optimize(model, x, [Net2NetShrink()])
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].weight.shape == (4, 3, 3, 3)
    assert relative_error(model, result.model, x) <= TOLERANCE


def test_shrink_config_is_validated():
    for bad in ({"tolerance": -1}, {"criterion": "gradients"}, {"target_ratio": 0}):
        with pytest.raises(ValidationError):
            Net2NetShrink(**bad)


# ------------------------------------------------------------------------------ deepen


@pytest.mark.parametrize("model_name", ["mlp", "resnet18"])
def test_deepen_is_exact_and_shrink_undoes_it(model_name, request):
    if model_name == "mlp":
        model, x = mlp(), torch.randn(5, 10)
    else:
        model, x = request.getfixturevalue("resnet18"), torch.randn(1, 3, 32, 32)
    deeper = graphopt.optimize(model, x, [Net2NetDeepen()])
    report = deeper.report.passes[0]
    assert report.exact and report.touched
    assert deeper.report.after.macs > deeper.report.before.macs
    assert relative_error(model, deeper.model, x) <= TOLERANCE
    back = graphopt.optimize(deeper.model, x, [Net2NetShrink()])
    assert back.report.after == deeper.report.before


def test_deepen_structure_and_declines():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.GELU()).eval()  # fmt: skip
    result = graphopt.optimize(model, torch.randn(1, 3, 8, 8), [Net2NetDeepen(kernel_size=5)])
    gm = result.model
    added = [type(m).__name__ for n, m in gm.named_children() if "deepen" in n]
    assert added == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert gm.get_submodule("0_deepen_0").kernel_size == (5, 5)
    declined = result.report.passes[0].declined
    assert [(d.target, d.reason) for d in declined] == [
        ("3", "followed by GELU, not an idempotent ReLU/ReLU6")
    ]
    with pytest.raises(ValidationError):
        Net2NetDeepen(kernel_size=4)


def test_concatenated_units_are_copied_part_by_part():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
            self.c = nn.Conv2d(6, 5, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(torch.cat([y, torch.relu(self.b(y))], dim=1))

    model, x = Dense().eval(), torch.randn(1, 3, 6, 6)
    wider = graphopt.optimize(model, x, [Net2NetWiden(factor=2.0)])
    assert wider.model.get_submodule("c").in_channels == 12
    assert relative_error(model, wider.model, x) <= TOLERANCE
    back = graphopt.optimize(wider.model, x, [Net2NetShrink()])
    assert back.report.after == wider.report.before


def test_activations_need_enough_samples():
    model, x = mlp(), torch.randn(2, 10)  # two samples cannot show that 16 units are collinear
    shrink = Net2NetShrink(criterion="activations", tolerance=0.1, depth=False)
    result = graphopt.optimize(model, x, [shrink])
    report = result.report.passes[0]
    assert not report.modified
    assert any("only 2 activation samples" in d.reason for d in report.declined)


def test_groups_too_small_to_grow_are_noted_not_counted():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    result = graphopt.optimize(model.eval(), torch.randn(2, 3), [Net2NetWiden(factor=1.1)])
    report = result.report.passes[0]
    assert "0: 4 units stay 4" in report.notes  # round(4 × 1.1) = 4
    assert report.metrics["groups_widened"] == 1  # only the 16-unit group (→ 18)
