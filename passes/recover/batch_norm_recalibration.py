"""BatchNormRecalibration: BN running statistics ← statistics of the rewritten model on data."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import fx, nn

from graphopt.analysis.calibration import first_inputs, run_batches
from graphopt.errors import ConfigError
from graphopt.pass_base import CALIBRATION, Pass, PassContext, PassResult
from graphopt.report import Decline

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormRecalibration(Pass):
    """μ, σ² of every BatchNorm ⇐ their average over calibration batches (affine γ, β kept).

    After pruning or factorization the activations a BatchNorm sees have changed, but its
    running statistics still describe the original model; re-estimating them is cheap and often
    worth several points of accuracy. Statistics are the cumulative average over the batches
    (``momentum=None``); only the norms run in training mode, so dropout and everything else
    stay in inference mode. Needs ``calibration_data``.
    """

    name: ClassVar[str] = "batch_norm_recalibration"
    exact: ClassVar[bool] = False
    requires_data: ClassVar[frozenset[str]] = frozenset({CALIBRATION})

    batches: int = Field(default=32, ge=1, description="Most calibration batches used.")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.calibration_data is None:
            raise ConfigError(
                f"{self.name} needs calibration data: optimize(..., calibration_data=loader)"
            )
        norms, declined = self._norms(gm)
        if not norms:
            return PassResult(gm, False, self.report(False, [], declined))
        batches = first_inputs(ctx.calibration_data, self.batches)
        saved = {name: (m.momentum, m.training) for name, m in norms.items()}
        was_training = gm.training
        try:
            gm.eval()
            for module in norms.values():
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the batches
                module.train()
            run_batches(gm, batches)
        finally:
            gm.train(was_training)
            for name, module in norms.items():
                module.momentum, training = saved[name]
                module.train(training)
        notes = [f"{len(norms)} BatchNorm layers re-estimated on {len(batches)} batches"]
        report = self.report(True, sorted(norms), declined, notes)
        report.metrics["batches"] = float(len(batches))
        return PassResult(gm, True, report)

    def _norms(self, gm: fx.GraphModule) -> tuple[dict[str, nn.Module], list[Decline]]:
        norms, declined = {}, []
        for name, module in gm.named_modules():
            if not isinstance(module, NORMS) or not self.selects(name, module):
                continue
            if not module.track_running_stats:
                declined.append(Decline(target=name, reason="does not track running statistics"))
                continue
            norms[name] = module
        return norms, declined
