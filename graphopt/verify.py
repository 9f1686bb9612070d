"""Checks run after every pass: lint, shape propagation, and output equality for exact passes.

``EXACT_TOLERANCE`` is the one place the tolerance of "function-preserving" is stated: the
largest output difference, relative to the largest output magnitude, that an exact pass may
introduce (float32 reassociation, e.g. folding BatchNorm into a convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from graphopt.analysis.shapes import propagate_shapes, side_effect_free_run
from graphopt.errors import CaptureError, VerificationError
from graphopt.report import Verification

EXACT_TOLERANCE = 1e-5


def relative_error(actual: object, expected: object) -> float:
    """``max|actual - expected| / max|expected|`` over every tensor of two output structures."""
    got, _ = tree_flatten(actual)
    want, _ = tree_flatten(expected)
    diff, scale = 0.0, 0.0
    for a, b in zip(got, want, strict=True):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            diff = max(diff, (a.double() - b.double()).abs().max().item() if a.numel() else 0.0)
            scale = max(scale, b.double().abs().max().item() if b.numel() else 0.0)
    return diff / scale if scale > 0 else diff


def output_shapes(outputs: object) -> list[tuple[int, ...] | None]:
    """The shape of every tensor leaf of an output structure (``None`` for non-tensors)."""
    leaves, _ = tree_flatten(outputs)
    return [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in leaves]


def verify_pass_output(
    pass_name: str,
    exact: bool,
    before: fx.GraphModule,
    after: fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    reference: object,
    tolerance: float = EXACT_TOLERANCE,
) -> tuple[object, Verification]:
    """Lint ``after``, run it (recording shapes) and, for exact passes, compare outputs.

    Returns ``after``'s outputs (the reference for the next pass) and what was checked.
    """
    try:
        after.graph.lint()
        after.recompile()
    except Exception as exc:  # noqa: BLE001 - any lint failure is a verification failure
        raise VerificationError(pass_name, f"graph lint failed: {exc}") from exc
    try:
        outputs = propagate_shapes(after, inputs)
    except CaptureError as exc:
        raise VerificationError(pass_name, f"the rewritten graph does not run: {exc}") from exc
    if output_shapes(outputs) != output_shapes(reference):
        raise VerificationError(
            pass_name,
            f"output shapes changed from {output_shapes(reference)} to {output_shapes(outputs)}",
        )
    if not exact:
        return outputs, Verification(ran=True, compared=False)
    error = relative_error(outputs, reference)
    if not error <= tolerance:
        node = first_diverging_node(before, after, inputs, tolerance)
        raise VerificationError(
            pass_name,
            f"declared exact, but outputs differ by {error:.3g} relative (tolerance {tolerance:g})",
            node=node,
        )
    return outputs, Verification(ran=True, compared=True, max_rel_error=error)


def first_diverging_node(
    before: fx.GraphModule, after: fx.GraphModule, inputs: Sequence[torch.Tensor], tolerance: float
) -> str:
    """The first node of ``after`` whose value differs from the same-named node of ``before``."""
    old, new = _all_values(before, inputs), _all_values(after, inputs)
    for node in after.graph.nodes:
        if node.name not in old or node.op == "placeholder":
            continue
        a, b = new[node.name], old[node.name]
        if output_shapes(a) == output_shapes(b) and relative_error(a, b) > tolerance:
            return node.format_node()
    return "output"


def _all_values(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[str, object]:
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    with side_effect_free_run(gm):
        interpreter.run(*inputs)
    return {node.name: value for node, value in interpreter.env.items()}
