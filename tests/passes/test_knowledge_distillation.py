"""KnowledgeDistillation: the student moves towards the teacher, runs are seeded, the best
validated checkpoint is kept, and what cannot be distilled is refused or declined."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import graphopt
from graphopt.errors import ConfigError
from graphopt.passes import ChannelPruning, KnowledgeDistillation


def toy() -> nn.Module:
    """A small CNN whose logits are confident enough (scaled head) for KL to matter."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 36, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[5].weight.mul_(20)
    return model


def data(batches: int = 8, labels: bool = True, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 3, 6, 6, generator=g) for _ in range(batches)]
    return [(x, torch.randint(0, 10, (16,), generator=g)) for x in xs] if labels else xs


PRUNE = ChannelPruning(channel_ratio=0.5, include=["0"])


def distil(model, kd: KnowledgeDistillation, **kwargs):
    batches = kwargs.pop("training_data", data())
    example = torch.randn(2, 3, 6, 6)
    return graphopt.optimize(model, example, [PRUNE, kd], training_data=batches, **kwargs)


def kl_to(teacher, student, x) -> float:
    with torch.no_grad():
        t, s = teacher(x), student(x)
    return float(F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean",
                          log_target=True))  # fmt: skip


def test_distillation_brings_the_pruned_student_closer_to_the_teacher_on_held_out_data():
    model = toy()
    kd = KnowledgeDistillation(steps=100, lr=0.02, progress=False)
    pruned = graphopt.optimize(model, data()[0][0], [PRUNE]).model
    result = distil(model, kd, training_data=data(64))
    held_out = torch.randn(256, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    before, after = kl_to(model, pruned, held_out), kl_to(model, result.model, held_out)
    assert after < 0.6 * before  # measured 0.273 → 0.140, (before, after)
    report = result.report.passes[1]
    assert report.metrics["steps"] == 100 and report.modified
    assert result.model.get_submodule("2").in_channels == 8  # still the pruned shape


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights():
    model = toy()

    def weights(seed: int):
        kd = KnowledgeDistillation(steps=5, progress=False, seed=seed)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(
                torch.cat([x for x, _ in data(4)]), torch.arange(64) % 10
            ),
            batch_size=16,
            shuffle=True,
        )
        return distil(model, kd, training_data=loader).model.state_dict()

    torch.manual_seed(123)
    first = weights(0)
    torch.manual_seed(456)  # the global RNG state must not matter
    second, third = weights(0), weights(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_the_best_validated_checkpoint_is_kept():
    model = toy()
    pruned = graphopt.optimize(model, data()[0][0], [PRUNE]).model
    calls = []

    def getting_worse(student: nn.Module) -> float:
        calls.append(student.training)
        return -float(len(calls))  # step 0 scores best

    kd = KnowledgeDistillation(steps=6, validate_every=2, progress=False, lr=0.05)
    result = distil(model, kd, validation=getting_worse)
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in pruned.state_dict().items())
    assert calls == [False] * 4  # steps 0, 2, 4, 6; always scored in eval mode
    assert result.report.passes[1].metrics["best_step"] == 0
    assert not result.report.passes[1].modified


def test_labels_and_features_enter_the_loss_and_mismatched_features_are_declined():
    model = toy()
    kd = KnowledgeDistillation(
        steps=3, label_weight=0.5, feature_weight=1.0, features=("2", "0"), progress=False
    )
    report = distil(model, kd).report.passes[1]
    assert [(d.target, "shape" in d.reason) for d in report.declined] == [("0", True)]
    with pytest.raises(ConfigError, match="no labels"):
        distil(model, kd, training_data=data(labels=False))


def test_configuration_and_data_are_checked():
    with pytest.raises(ValidationError, match="exactly one"):
        KnowledgeDistillation()
    with pytest.raises(ValidationError, match="exactly one"):
        KnowledgeDistillation(steps=1, epochs=1)
    with pytest.raises(ValidationError, match="needs 'features'"):
        KnowledgeDistillation(steps=1, feature_weight=1.0)
    model, x = toy(), torch.randn(2, 3, 6, 6)
    with pytest.raises(ConfigError, match="needs training_data"):
        graphopt.optimize(model, x, [KnowledgeDistillation(steps=1, progress=False)])
    epochs = KnowledgeDistillation(epochs=1, progress=False)
    with pytest.raises(ConfigError, match="len"):
        graphopt.optimize(model, x, [epochs], training_data=iter(data()))
    result = graphopt.optimize(model, x, [epochs], training_data=data(batches=3))
    assert result.report.passes[0].metrics["steps"] == 3


def test_a_model_compressed_elsewhere_distils_from_the_original_given():
    model = toy()
    pruned = graphopt.optimize(model, data()[0][0], [PRUNE]).model  # "another tool"
    kd = KnowledgeDistillation(steps=100, lr=0.02, progress=False)
    result = graphopt.optimize(pruned, data()[0][0], [kd], training_data=data(64), original=model)
    held_out = torch.randn(256, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    assert kl_to(model, result.model, held_out) < 0.6 * kl_to(model, pruned, held_out)


def test_clipping_bounds_each_step_by_lr_times_max_grad_norm():
    model = toy()
    pruned = graphopt.optimize(model, data()[0][0], [PRUNE]).model
    before = torch.cat([p.detach().flatten() for p in pruned.parameters()])

    def moved(**clip) -> float:
        kd = KnowledgeDistillation(
            steps=3, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
            progress=False, **clip,
        )  # fmt: skip
        after = torch.cat([p.detach().flatten() for p in distil(model, kd).model.parameters()])
        return float((after - before).norm())

    assert moved(max_grad_norm=1e-3) <= 3 * 0.1 * 1e-3 * (1 + 1e-4)
    assert moved() > 10 * 3 * 0.1 * 1e-3
