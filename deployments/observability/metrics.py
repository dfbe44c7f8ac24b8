"""Serving metrics through Ray's metrics API, scraped as Prometheus from each node's metrics export port.

Ray prefixes every name with ``ray_``: ``ray_slmfleet_tokens_total{model,specialist,pipeline,direction,adapter}``
(``adapter``: an adapter specialist's source@version, empty for the base model),
``ray_slmfleet_cost_total`` and ``ray_slmfleet_llm_counterfactual_cost_total`` (same tags),
``ray_slmfleet_pipeline_runs_total{pipeline,status}``, ``ray_slmfleet_escalations_total{pipeline,step,reason}``
(a chat call's escalation counts with an empty pipeline and the specialist or model it named as the step),
``ray_slmfleet_usage_log_records_total{outcome}`` (written or dropped; see ``deployments/router/usage_log.py``).
"""

from __future__ import annotations

from ray.util.metrics import Counter

from cluster.cost import PriceBook
from deployments.pipeline.result import PipelineResult
from deployments.protocol import GenerationRequest, GenerationResult

CALL_TAGS = ("model", "specialist", "pipeline", "direction")
TOKEN_TAGS = (*CALL_TAGS, "adapter")


class FleetMetrics:
    """Counters one router replica updates after every model call and pipeline run."""

    def __init__(self, prices: PriceBook, llm_model: str | None) -> None:
        self.prices = prices
        self.llm_model = llm_model
        self.tokens = Counter("slmfleet_tokens", "Tokens processed", tag_keys=TOKEN_TAGS)
        self.cost = Counter("slmfleet_cost", "Cost of model calls (price units)", tag_keys=CALL_TAGS[:3])
        self.counterfactual = Counter(
            "slmfleet_llm_counterfactual_cost", "Cost had the LLM tier served the same tokens", tag_keys=CALL_TAGS[:3]
        )
        self.runs = Counter("slmfleet_pipeline_runs", "Pipeline runs", tag_keys=("pipeline", "status"))
        self.escalations = Counter(
            "slmfleet_escalations", "Steps re-run on the LLM tier", tag_keys=("pipeline", "step", "reason")
        )
        self.usage_log_records = Counter(
            "slmfleet_usage_log_records", "Usage-log records written or dropped", tag_keys=("outcome",)
        )

    def record_call(self, model: str, request: GenerationRequest, result: GenerationResult, pipeline: str) -> None:
        tags = {"model": model, "specialist": request.specialist or "", "pipeline": pipeline}
        adapter = request.specialist_spec.adapter if request.specialist_spec else None
        token_tags = {**tags, "adapter": adapter.label() if adapter else ""}
        self.tokens.inc(result.prompt_tokens, {**token_tags, "direction": "in"})
        self.tokens.inc(result.completion_tokens, {**token_tags, "direction": "out"})
        total = result.prompt_tokens + result.completion_tokens
        if (cost := self.prices.cost(model, total)) is not None:
            self.cost.inc(cost, tags)
        if self.llm_model and (llm_cost := self.prices.cost(self.llm_model, total)) is not None:
            self.counterfactual.inc(llm_cost, tags)

    def record_usage_log(self, outcome: str, records: int) -> None:
        """Called from the usage log's writer thread as well as the event loop (Ray's counters are thread-safe)."""
        self.usage_log_records.inc(records, {"outcome": outcome})

    def record_chat_escalation(self, name: str, reason: str) -> None:
        self.escalations.inc(1, {"pipeline": "", "step": name, "reason": reason})

    def record_run(self, result: PipelineResult) -> None:
        self.runs.inc(1, {"pipeline": result.pipeline, "status": result.status})
        for step in result.steps:
            for escalation in step.escalations:
                tags = {"pipeline": result.pipeline, "step": step.name, "reason": escalation.reason}
                self.escalations.inc(1, tags)
