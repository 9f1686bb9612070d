"""DepthwiseSubstitution: Conv(k×k) ⇒ PW(1×1) ∘ DW(k×k), the MobileNets block. Lossy unless
the multiplier is large enough."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from torch import fx, nn

from graphopt.analysis import factorize as fz
from graphopt.analysis.cost import chain_macs, node_macs
from graphopt.ir import replace_with_chain
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.report import Decline


class DepthwiseSubstitution(Pass):
    """Conv k×k (C→N) ⇒ PW 1×1 (C·m→N) ∘ DW k×k (C→C·m, groups=C).

    Initialised from the kernel: for each input channel c the slice W[:, c] (N × k·k) is
    replaced by its best rank-m approximation (SVD), which is exactly m depthwise filters and
    a pointwise mix; exact when m ≥ min(N, k·k). Stride, padding, dilation and bias are kept.
    """

    name: ClassVar[str] = "depthwise_substitution"
    exact: ClassVar[bool] = False

    multiplier: int = Field(default=1, ge=1, description="Depthwise filters per input channel.")
    require_savings: bool = Field(default=True, description="Only substitute when MACs drop.")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        touched, declined, notes, errors = [], [], [], []
        for node in list(gm.graph.nodes):
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, nn.Conv2d) or not self.selects(node.target, module):
                continue
            reason = _decline_reason(module)
            if reason:
                declined.append(Decline(target=node.target, reason=reason))
                continue
            modules, error = self._substitute(module)
            old, new = node_macs(gm, node), chain_macs(modules, node)
            if self.require_savings and new >= old:
                declined.append(
                    Decline(target=node.target, reason=f"MACs would not drop ({old:,} → {new:,})")
                )
                continue
            notes.append(
                f"{node.target}: MACs {old:,} → {new:,}, relative kernel error {error:.3g}"
            )
            errors.append(error)
            touched += replace_with_chain(gm, node, modules)
        if touched:
            gm.delete_all_unused_submodules()
            gm.recompile()
        report = self.report(bool(touched), touched, declined, notes)
        if errors:
            report.metrics["mean_relative_kernel_error"] = float(np.mean(errors))
        return PassResult(gm, bool(touched), report)

    def _substitute(self, conv: nn.Conv2d) -> tuple[list[nn.Module], float]:
        w = conv.weight.detach().double().numpy()
        n, c, kh, kw = w.shape
        dw, pw = fz.depthwise_factors(w, self.multiplier)
        depthwise = nn.Conv2d(
            c,
            c * self.multiplier,
            (kh, kw),
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=c,
            bias=False,
        )
        depthwise.weight = fz.as_param(dw, conv.weight)
        pointwise = nn.Conv2d(c * self.multiplier, n, 1, bias=conv.bias is not None)
        pointwise.weight = fz.as_param(pw[:, :, None, None], conv.weight)
        if conv.bias is not None:
            pointwise.bias = nn.Parameter(conv.bias.detach().clone())
        rebuilt = np.einsum(
            "ncm,cmk->nck",
            pw.reshape(n, c, self.multiplier),
            dw.reshape(c, self.multiplier, kh * kw),
            optimize=True,
        )
        error = np.linalg.norm(rebuilt - w.reshape(n, c, -1)) / max(np.linalg.norm(w), 1e-300)
        return [depthwise, pointwise], float(error)


def _decline_reason(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1:
        return f"already grouped (groups={conv.groups})"
    if conv.kernel_size == (1, 1):
        return "1×1 kernel: nothing to separate"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported"
    return None
