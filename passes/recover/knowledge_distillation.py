"""KnowledgeDistillation: θ ⇐ SGD on T²·KL(p_teacher^T ‖ p_student^T) + α·CE(y) + β·Σ‖f_s − f_t‖²."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import fx, nn

from graphopt.analysis.calibration import split_batch
from graphopt.errors import ConfigError
from graphopt.pass_base import TRAINING, Pass, PassContext, PassResult
from graphopt.report import Decline

Weight = Annotated[float, Field(ge=0, le=1000)]


class KnowledgeDistillation(Pass):
    """Fine-tune the rewritten model with the original as teacher (Hinton et al. 2015).

    The loss is ``kd_weight · T² · KL(softmax(t/T) ‖ softmax(s/T))`` on the logits, plus
    ``label_weight · CE(s, y)`` when batches carry labels, plus ``feature_weight ·`` the mean
    squared error between the outputs of the modules named in ``features`` in both models
    (normalised by the teacher's mean square; modules whose shapes differ are declined).
    Batches come from ``training_data`` (else ``calibration_data``), for ``steps`` optimiser
    steps or ``epochs`` passes over the loader, with a warm-up then cosine (or constant)
    learning rate. Runs are seeded (parameters, dropout, a DataLoader's shuffling). With a
    ``validation`` callback in the context the model is scored before training, every
    ``validate_every`` steps and at the end, and the best-scoring weights are kept.
    """

    name: ClassVar[str] = "knowledge_distillation"
    exact: ClassVar[bool] = False
    requires_data: ClassVar[frozenset[str]] = frozenset({TRAINING})

    steps: int | None = Field(default=None, ge=1, description="Optimiser steps (or epochs).")
    epochs: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None, description="Passes over the training data (or steps)."
    )
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=10)] = Field(default=0.01, description="Peak rate.")
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 5e-4
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="After warm-up: cosine decay to 0, or constant."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up from lr/100.")
    max_grad_norm: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Clip the gradients' global norm to this (None: no clipping)."
    )
    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0
    kd_weight: Weight = 1.0
    label_weight: Weight = Field(default=0.0, description="Cross-entropy on labels (needs them).")
    feature_weight: Weight = 0.0
    features: tuple[str, ...] = Field(
        default=(), description="Modules whose outputs the student matches (same names/shapes)."
    )
    validate_every: int | None = Field(
        default=None, ge=1, description="Steps between validations (default: once per epoch)."
    )
    seed: int | None = Field(default=None, description="Training seed (default: the run's).")
    progress: bool = Field(default=True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _one_budget(self) -> KnowledgeDistillation:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' and 'epochs'")
        if self.feature_weight > 0 and not self.features:
            raise ValueError("feature_weight > 0 needs 'features'")
        return self

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        data = ctx.training_data if ctx.training_data is not None else ctx.calibration_data
        if data is None or ctx.original is None:
            raise ConfigError(
                f"{self.name} needs training data: optimize(..., training_data=loader)"
            )
        steps = self.total_steps(data)
        features, declined = self._matched_features(gm, ctx)
        seed = ctx.seed if self.seed is None else self.seed
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            trainer = Trainer(self, gm, ctx.original, features, ctx.validation)
            trainer.train(data, steps)
        notes = [
            f"{steps} steps in {trainer.seconds:.1f} s, loss {trainer.losses[0]:.4g} → "
            f"{trainer.losses[-1]:.4g}"
        ]
        if trainer.scores:
            best_step, best = trainer.best
            notes.append(
                f"kept step {best_step} (validation {best:.4g}; at step 0 "
                f"{trainer.scores[0][1]:.4g})"
            )
        trained = [
            n for n, m in gm.named_modules() if next(m.parameters(recurse=False), None) is not None
        ]
        changed = not trainer.scores or trainer.best[0] != 0  # step 0 kept: weights unchanged
        report = self.report(changed, trained if changed else [], declined, notes)
        report.metrics.update(trainer.metrics(steps))
        return PassResult(gm, changed, report)

    def total_steps(self, data) -> int:
        """Optimiser steps: ``steps``, or ``epochs`` × batches per pass over ``data``."""
        if self.steps is not None:
            return self.steps
        try:
            per_epoch = len(data)
        except TypeError:
            raise ConfigError(f"{self.name}: 'epochs' needs training data with a len()") from None
        return max(1, math.ceil(self.epochs * per_epoch))

    def _matched_features(self, gm, ctx) -> tuple[list[str], list[Decline]]:
        """Feature names present in both models whose outputs have the same shape."""
        if not self.features:
            return [], []
        student = _module_outputs(gm, self.features, ctx.example_inputs)
        teacher = _module_outputs(ctx.original, self.features, ctx.example_inputs)
        kept, declined = [], []
        for name in self.features:
            s, t = student.get(name), teacher.get(name)
            if s is None or t is None:
                declined.append(Decline(target=name, reason="no module of that name in both"))
            elif s.shape != t.shape:
                reason = f"student shape {list(s.shape)} ≠ teacher {list(t.shape)}"
                declined.append(Decline(target=name, reason=reason))
            else:
                kept.append(name)
        return kept, declined


class Trainer:
    """The training loop of one distillation run (shared by the training-time passes)."""

    def __init__(
        self, cfg: KnowledgeDistillation, student, teacher, features, validation, penalty=None
    ):
        self.cfg, self.student, self.teacher = cfg, student, copy.deepcopy(teacher).eval()
        self.features, self.validation = features, validation
        self.penalty = penalty  # a differentiable term added to every step's loss
        self.losses: list[float] = []
        self.scores: list[tuple[int, float]] = []
        self.best_state: dict | None = None
        self.seconds = 0.0

    @property
    def best(self) -> tuple[int, float]:
        return max(self.scores, key=lambda s: (s[1], -s[0]))

    def train(self, data, steps: int) -> None:
        start = time.perf_counter()
        params = list(self.student.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = self._optimizer(params)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor(steps))
        every = self.cfg.validate_every or _len_or(data, steps)
        self._validate(0)
        with self._progress(steps) as (bar, task):
            for step, batch in enumerate(_forever(data), start=1):
                self.student.train()
                loss = self._loss(*split_batch(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
                self.losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=f"distil  loss {self.losses[-1]:.4f}")
                if step % every == 0 or step == steps:
                    self._validate(step)
                if step == steps:
                    break
        self.student.eval()
        if self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        self.seconds = time.perf_counter() - start

    def _loss(self, inputs: tuple[torch.Tensor, ...], labels) -> torch.Tensor:
        cfg = self.cfg
        with _capture(self.student, self.features) as s_feats:
            s_logits = _logits(self.student(*inputs))
        loss = self.penalty() if self.penalty is not None else s_logits.new_zeros(())
        if cfg.kd_weight > 0 or self.features:  # the teacher runs only when it is needed
            with _capture(self.teacher, self.features) as t_feats, torch.no_grad():
                t_logits = _logits(self.teacher(*inputs))
            temp = cfg.temperature
            loss = loss + cfg.kd_weight * temp**2 * F.kl_div(
                F.log_softmax(s_logits / temp, dim=-1),
                F.log_softmax(t_logits / temp, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
        if cfg.label_weight > 0:
            if labels is None:
                raise ConfigError(f"{cfg.name}: label_weight > 0 but the batches have no labels")
            loss = loss + cfg.label_weight * F.cross_entropy(s_logits, labels)
        for name in self.features:
            t = t_feats[name]
            mse = F.mse_loss(s_feats[name], t) / t.pow(2).mean().clamp_min(1e-12)
            loss = loss + cfg.feature_weight * mse / len(self.features)
        return loss

    def _validate(self, step: int) -> None:
        if self.validation is None:
            return
        self.student.eval()
        with torch.no_grad():
            score = float(self.validation(self.student))
        if not self.scores or score > self.best[1]:
            self.best_state = copy.deepcopy(self.student.state_dict())
        self.scores.append((step, score))

    def _optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )

    def _lr_factor(self, steps: int):
        warmup, cosine = self.cfg.warmup_steps, self.cfg.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return 0.01 + 0.99 * step / warmup
            if not cosine:
                return 1.0
            done = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

        return factor

    def _progress(self, steps: int):
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            disable=not self.cfg.progress,
        )
        return _ProgressScope(bar, steps)

    def metrics(self, steps: int) -> dict[str, float]:
        found = {"steps": float(steps), "seconds": self.seconds, "final_loss": self.losses[-1]}
        if self.scores:
            best_step, best = self.best
            found.update(
                best_step=float(best_step),
                best_validation=best,
                initial_validation=self.scores[0][1],
            )
        return found


class _ProgressScope:
    def __init__(self, bar: Progress, steps: int):
        self.bar, self.steps = bar, steps

    def __enter__(self):
        self.bar.__enter__()
        return self.bar, self.bar.add_task("distil", total=self.steps)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


class _capture:
    """Context manager: outputs of the named modules during one forward."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names, self.seen, self.handles = model, names, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        for name in self.names:

            def hook(module, args, out, _name=name):
                self.seen[_name] = out

            self.handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        return self.seen

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _module_outputs(model: nn.Module, names, inputs) -> dict[str, torch.Tensor]:
    present = [n for n in names if _has_module(model, n)]
    with _capture(model, present) as seen, torch.no_grad():
        model(*inputs)
    return dict(seen)


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _logits(output) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ConfigError(
            f"knowledge_distillation needs a model returning one logits tensor, "
            f"got {type(output).__name__}"
        )
    return output


def _forever(data) -> Iterator:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ConfigError("knowledge_distillation: the training data is empty")


def _len_or(data, default: int) -> int:
    try:
        return max(1, len(data))
    except TypeError:
        return default
