"""What a pipeline run reports: per-step results, escalations, tokens, latency and cost, and the SSE step events.

Plain dataclasses with ``to_dict()`` (JSON-ready) so the router returns them as they are and the benchmark and
tests read the same shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cluster.cost import CostSummary

StepStatus = Literal["ok", "skipped", "failed"]
ErrorKind = Literal["contract", "unavailable", "error", "tool", "condition"]
EventType = Literal[
    "step_started", "step_delta", "step_retried", "step_escalated", "step_finished", "pipeline_finished"
]


@dataclass(frozen=True)
class StepError:
    """Why a step failed. kind: contract | unavailable | error (the model refused the request) | tool | condition."""

    kind: ErrorKind
    message: str
    step: str | None = None


@dataclass(frozen=True)
class Escalation:
    """One hand-off from a model to the LLM tier, and why."""

    from_model: str
    to_model: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Attempt:
    """One model call within a step: the first try, a same-model retry, or the escalated call."""

    model: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    finish_reason: str | None
    action: str  # accept | retry | escalate | fail
    reason: str | None = None
    detail: str = ""
    cost: float | None = None
    engine_s: float | None = None  # time inside the model's engine; latency_s minus this is the serving path's


@dataclass
class StepResult:
    """One step's outcome; ``output`` is parsed JSON for JSON contracts, the tool's output for tool steps."""

    name: str
    kind: str  # specialist | model | tool
    status: StepStatus
    output: Any = None
    text: str | None = None
    model: str | None = None
    specialist: str | None = None
    tool: str | None = None
    args: Any = None
    escalations: list[Escalation] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost: float | None = 0.0
    llm_cost: float | None = 0.0
    error: StepError | None = None

    @property
    def escalated(self) -> bool:
        return bool(self.escalations)

    def scope_entry(self) -> dict[str, Any]:
        """What later templates and conditions see as ``steps.<name>``."""
        return {
            "output": self.output,
            "error": self.error.message if self.error else None,
            "model": self.model,
            "status": self.status,
            "escalated": self.escalated,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "escalated": self.escalated}


@dataclass
class PipelineResult:
    """A finished run. ``status`` is "failed" when a step failed with ``on_error: stop``; ``error`` says which."""

    pipeline: str
    run_id: str
    status: Literal["ok", "failed"]
    output: Any
    steps: list[StepResult]
    tokens_in: int
    tokens_out: int
    latency_s: float
    cost: CostSummary
    error: StepError | None = None

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [s.to_dict() for s in self.steps]
        return data


@dataclass(frozen=True)
class StepEvent:
    """One server-sent event of a run; the last is ``pipeline_finished`` carrying the whole result."""

    type: EventType
    pipeline: str
    run_id: str
    step: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sse(self) -> str:
        """The event as an SSE frame: ``event: <type>`` and one JSON ``data:`` line."""
        return f"event: {self.type}\ndata: {json.dumps(self.to_dict(), default=str)}\n\n"
