"""Input statistics of chosen layers on calibration batches (for activation-aware passes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn


def split_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    """A calibration batch as (model inputs, labels or None).

    Accepted: a tensor; ``(inputs, labels)`` where inputs is a tensor or a tuple of tensors
    (several model inputs). The inputs are copies: a graph with in-place ops on its inputs
    must not change the caller's data (or the next pass's view of it).
    """
    if isinstance(batch, torch.Tensor):
        return (batch.clone(),), None
    inputs, labels = batch[0], batch[1] if len(batch) > 1 else None
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs), labels


def first_inputs(batches: Iterable[Any], limit: int) -> list[tuple[torch.Tensor, ...]]:
    """The model inputs of up to ``limit`` calibration batches."""
    found = []
    for batch in batches:
        if len(found) >= limit:
            break
        found.append(split_batch(batch)[0])
    return found


def patches(module: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Rows the layer's weight multiplies: features (Linear), im2col patches or pixels (conv)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if mode == "pixels":
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_covariances(
    gm: fx.GraphModule, targets: dict[str, str], batches: list[tuple]
) -> dict[str, np.ndarray]:
    """E[x xᵀ] of each target module's input rows; ``targets`` maps name → patches mode."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    hooks = {}
    for name, mode in targets.items():

        def hook(mod, args, _name=name, _mode=mode):
            rows = patches(mod, args[0].detach(), _mode).double()
            sums[_name] = sums.get(_name, 0) + (rows.T @ rows).numpy()
            counts[_name] = counts.get(_name, 0) + rows.shape[0]

        hooks[name] = hook
    run_batches(gm, batches, input_hooks=hooks)
    return {name: sums[name] / counts[name] for name in sums}


def relative_output_error(
    original: nn.Module, replacement: nn.Module, inputs: list[torch.Tensor]
) -> float:
    """‖f(x) − g(x)‖ / ‖f(x)‖ over the given layer inputs."""
    num = den = 0.0
    with torch.no_grad():
        for x in inputs:
            want = original(x)
            num += float((replacement(x) - want).double().pow(2).sum())
            den += float(want.double().pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def layer_inputs(
    gm: fx.GraphModule, names: list[str], batches: list[torch.Tensor]
) -> dict[str, list]:
    """The tensors each named module receives on the calibration batches."""
    seen: dict[str, list] = {n: [] for n in names}
    hooks = {n: (lambda m, a, _n=n: seen[_n].append(a[0].detach())) for n in names}
    run_batches(gm, batches, input_hooks=hooks)
    return seen


def run_batches(
    gm: nn.Module,
    batches: list[tuple],
    *,
    input_hooks: dict | None = None,
    output_hooks: dict | None = None,
) -> None:
    """Run ``gm`` on every batch (no grad); ``input_hooks[name]`` sees module ``name``'s inputs
    (forward pre-hook), ``output_hooks[name]`` its inputs and output (forward hook)."""
    handles = [
        gm.get_submodule(n).register_forward_pre_hook(h) for n, h in (input_hooks or {}).items()
    ]
    handles += [
        gm.get_submodule(n).register_forward_hook(h) for n, h in (output_hooks or {}).items()
    ]
    try:
        with torch.no_grad():
            for inputs in batches:
                gm(*inputs)
    finally:
        for handle in handles:
            handle.remove()
