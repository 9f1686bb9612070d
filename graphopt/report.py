"""Reports: what each pass did and what the model costs before and after. JSON-serialisable."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _ReportModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decline(_ReportModel):
    """A place where a rule matched but its check refused to rewrite, and why."""

    target: str = Field(description="Module or node the rule declined.")
    reason: str = Field(description="Why the rewrite was not applied.")
    location: str | None = Field(default=None, description="Source line that created the node.")
    rule: str | None = Field(default=None, description="The rule that declined, when a rule did.")


class ModelStats(_ReportModel):
    """Size and cost of a model, counted on the FX graph from the recorded shapes."""

    params: int = Field(ge=0, description="Number of parameters.")
    macs: int = Field(ge=0, description="Multiply-accumulates for one call on the example inputs.")


class Verification(_ReportModel):
    """What the checks after a pass found."""

    ran: bool = Field(description="Whether the graph was executed on the example inputs.")
    compared: bool = Field(description="Whether outputs were compared with the graph before.")
    max_rel_error: float | None = Field(
        default=None, description="max|after - before| / max|before| over all outputs."
    )


class PassReport(_ReportModel):
    """What one pass did."""

    name: str = Field(description="Registered pass name.")
    config: dict[str, Any] = Field(description="The pass's validated fields.")
    exact: bool = Field(description="Whether the pass declares itself function-preserving.")
    modified: bool = Field(description="Whether the graph changed.")
    touched: list[str] = Field(default_factory=list, description="Modules or nodes rewritten.")
    declined: list[Decline] = Field(default_factory=list, description="Matches not rewritten.")
    notes: list[str] = Field(default_factory=list, description="Anything else worth knowing.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Pass-specific numbers (e.g. requested vs achieved)."
    )
    before: ModelStats | None = None
    after: ModelStats | None = None
    verification: Verification | None = None
    seconds: float | None = Field(default=None, ge=0, description="Wall time of the pass.")


class LayerChange(_ReportModel):
    """One layer of the captured model (a module with parameters), before and after the run.

    A layer a pass replaced by several (low rank: ``conv`` → ``conv.0``, ``conv.1``) is
    counted with its replacements; ``width`` is the output channels/features."""

    name: str = Field(description="Qualified module name in the captured graph.")
    kind: str = Field(description="Module class before the run.")
    macs_before: int = Field(ge=0)
    macs_after: int = Field(ge=0, description="0 when the layer was removed.")
    params_before: int = Field(ge=0)
    params_after: int = Field(ge=0)
    width_before: int | None = None
    width_after: int | None = None


class OptimizeReport(_ReportModel):
    """The whole run: the model before and after, and every pass in order."""

    model: str = Field(description="Class name of the captured model.")
    input_shapes: list[list[int]] = Field(description="Shapes of the example inputs.")
    capture_route: str = Field(
        default="fx",
        description="How the model became a graph: 'fx' (symbolic tracing), 'fx with concrete "
        "shapes' (forward branches on shapes; the graph is specialised to the example input "
        "shapes) or 'graph' (a GraphModule was given).",
    )
    before: ModelStats
    after: ModelStats
    passes: list[PassReport]
    seconds: float = Field(ge=0, description="Wall time of capture and all passes.")
    layers: list[LayerChange] = Field(
        default_factory=list, description="Per layer MACs, params and width, before and after."
    )

    def ratio(self, field: str) -> float:
        """``after / before`` for ``params`` or ``macs`` (1.0 when ``before`` is zero)."""
        before, after = getattr(self.before, field), getattr(self.after, field)
        return after / before if before else 1.0
