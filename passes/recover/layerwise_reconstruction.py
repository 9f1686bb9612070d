"""LayerwiseReconstruction: W ⇐ argmin ‖X·W − Y‖² + λ‖W‖², Y = the original layer's output."""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import fx, nn

from graphopt.analysis.calibration import first_inputs, patches, run_batches
from graphopt.errors import ConfigError
from graphopt.pass_base import CALIBRATION, Pass, PassContext, PassResult
from graphopt.report import Decline


class LayerwiseReconstruction(Pass):
    """Refit each changed Conv2d/Linear in closed form to reproduce the original's output there.

    For every selected layer that exists under the same name in the graph before the first
    pass, with the same output width but other input width or other weights (the consumer of
    pruned channels, typically), and for the last layer of every chain that replaced a layer
    (low-rank factors, depthwise ∘ pointwise: ``conv.1`` matches the original ``conv``), solve the ridge-regularised least squares problem
    ``min ‖[X 1]·[W; b] − Y‖² + λ·mean(diag XᵀX)·‖W‖²`` where X are the layer's inputs in the
    rewritten model and Y the original layer's outputs, on the same calibration batches (the
    idea of ThiNet and He et al. 2017). All layers are fit from one pass of each model over
    the data (rows sampled evenly, seeded). Needs ``calibration_data``.
    """

    name: ClassVar[str] = "layerwise_reconstruction"
    exact: ClassVar[bool] = False
    requires_data: ClassVar[frozenset[str]] = frozenset({CALIBRATION})

    ridge: Annotated[float, Field(ge=0, le=10)] = Field(
        default=1e-3, description="λ, relative to the mean of diag(XᵀX)."
    )
    batches: int = Field(default=8, ge=1, description="Most calibration batches used.")
    max_rows: int = Field(
        default=16384,
        ge=16,
        description="Most (input, output) rows per layer, sampled evenly across batches (seeded).",
    )

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.calibration_data is None or ctx.original is None:
            raise ConfigError(f"{self.name} needs calibration data and the original graph")
        batches = first_inputs(ctx.calibration_data, self.batches)
        targets, declined = self._targets(gm, ctx.original)
        statistics = self._statistics(gm, ctx.original, targets, batches) if targets else {}
        notes, touched = [], []
        for name in targets:
            before, after = self._refit(gm.get_submodule(name), *statistics[name])
            touched.append(name)
            notes.append(f"{name}: relative output error {before:.3f} → {after:.3f}")
        report = self.report(bool(touched), touched, declined, notes)
        report.metrics["layers_refit"] = float(len(touched))
        return PassResult(gm, bool(touched), report)

    def _targets(self, gm, original) -> tuple[dict[str, str], list[Decline]]:
        """Layers to refit, each mapped to the original layer whose output it must reproduce."""
        old_modules, present = dict(original.named_modules()), dict(gm.named_modules())
        order = [n.target for n in gm.graph.nodes if n.op == "call_module"]
        targets, declined = {}, []
        for name in dict.fromkeys(order):
            module = gm.get_submodule(name)
            if type(module) not in (nn.Conv2d, nn.Linear) or not self.selects(name, module):
                continue
            origin = _origin(gm, name, old_modules)
            if origin is None:
                continue  # no original output to match at this point
            old = old_modules[origin]
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1 or module.padding_mode != "zeros"
            ):
                declined.append(Decline(target=name, reason="grouped or non-zero-padded conv"))
            elif old.weight.shape[0] != module.weight.shape[0]:
                declined.append(Decline(target=name, reason="output width changed"))
            elif folded := _folded_norm(original, present, origin):
                reason = f"BatchNorm {folded!r} was folded into it: the outputs differ by design"
                declined.append(Decline(target=name, reason=reason))
            elif origin != name or not _same_weights(old, module):
                targets[name] = origin
        return targets, declined

    def _refit(self, module: nn.Module, xtx, xty, yty: float) -> tuple[float, float]:
        before = _error(_weights(module), xtx, xty, yty)
        regulariser = self.ridge * float(np.mean(np.diag(xtx)[:-1])) * np.eye(len(xtx))
        regulariser[-1, -1] = 0.0  # the bias is not shrunk
        solution = np.linalg.solve(xtx + regulariser, xty)
        with torch.no_grad():
            weight = torch.from_numpy(solution[:-1].T.copy()).to(module.weight.dtype)
            module.weight.copy_(weight.reshape(module.weight.shape))
            bias = torch.from_numpy(solution[-1].copy()).to(module.weight.dtype)
            if module.bias is None:
                module.bias = nn.Parameter(bias)
            else:
                module.bias.copy_(bias)
        return before, _error(_weights(module), xtx, xty, yty)

    def _statistics(self, gm, original, targets: dict[str, str], batches) -> dict[str, tuple]:
        """Per layer XᵀX, XᵀY, YᵀY (double) from one pass of each model over the batches.

        X (with a column of ones for the bias) is sampled in the rewritten model, Y at the same
        rows in the original; every layer sees the inputs of the rewritten model before any
        refit (one pass over the data, not one per layer).
        """
        names = list(targets)
        per_batch = max(1, self.max_rows // len(batches))
        generator = torch.Generator().manual_seed(0)
        sampled: dict[str, list] = {n: [] for n in names}  # (rows of X, indices) per batch

        def take_inputs(name):
            def hook(module, args):
                rows = patches(module, args[0].detach(), "patches")
                index = torch.randperm(len(rows), generator=generator)[:per_batch]
                sampled[name].append((rows[index].double(), index))

            return hook

        run_batches(gm, batches, input_hooks={n: take_inputs(n) for n in names})
        sums = {n: [0.0, 0.0, 0.0] for n in names}
        position = {n: 0 for n in names}

        def take_outputs(name):
            def hook(module, args, out):
                rows, index = sampled[name][position[name]]
                position[name] += 1
                target = _output_rows(gm.get_submodule(name), out.detach())[index].double()
                rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
                total = sums[name]
                total[0] = total[0] + (rows.T @ rows).numpy()
                total[1] = total[1] + (rows.T @ target).numpy()
                total[2] = total[2] + float((target * target).sum())

            return hook

        run_batches(original, batches, output_hooks={targets[n]: take_outputs(n) for n in names})
        return {n: tuple(sums[n]) for n in names}


def _origin(gm: fx.GraphModule, name: str, old_modules: dict[str, nn.Module]) -> str | None:
    """The original layer at the same point: the one of the same name and type, or, for the
    last layer of a chain that replaced a layer (``conv`` → ``conv.0``, ``conv.1``; low-rank and
    depthwise substitution), the replaced layer."""
    old = old_modules.get(name)
    if old is not None:
        return name if type(old) is type(gm.get_submodule(name)) else None
    parent, _, index = name.rpartition(".")
    chain = gm.get_submodule(parent) if parent else None
    replaced = old_modules.get(parent)
    if (
        isinstance(chain, nn.Sequential)
        and index == str(len(chain) - 1)
        and type(replaced) is type(gm.get_submodule(name))
    ):
        return parent
    return None


def _folded_norm(
    original: fx.GraphModule, present: dict[str, nn.Module], origin: str
) -> str | None:
    """The BatchNorm after ``origin`` in the original graph that is not among the rewritten
    graph's modules (``present``), if any."""
    norm_type = nn.modules.batchnorm._BatchNorm
    for node in original.graph.find_nodes(op="call_module", target=origin):
        for user in node.users:
            if user.op != "call_module":
                continue
            is_norm = isinstance(original.get_submodule(user.target), norm_type)
            if is_norm and not isinstance(present.get(user.target), norm_type):
                return str(user.target)
    return None


def _same_weights(old: nn.Module, new: nn.Module) -> bool:
    return old.weight.shape == new.weight.shape and torch.equal(old.weight, new.weight)


def _output_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _weights(module: nn.Module) -> np.ndarray:
    """[W; b] as the solve lays it out: (inputs + 1) × outputs."""
    w = module.weight.detach().double().reshape(module.weight.shape[0], -1).T.numpy()
    b = (
        module.bias.detach().double().numpy()
        if module.bias is not None
        else np.zeros(module.weight.shape[0])
    )
    return np.vstack([w, b[None, :]])


def _error(w: np.ndarray, xtx, xty, yty: float) -> float:
    """‖XW − Y‖ / ‖Y‖ from the accumulated statistics."""
    residual = float(np.sum(w * (xtx @ w)) - 2 * np.sum(w * xty) + yty)
    return (max(residual, 0.0) / yty) ** 0.5 if yty else 0.0
