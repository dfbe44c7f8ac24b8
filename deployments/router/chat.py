"""One chat call on a model or specialist, judged like a one-step pipeline: accept, retry, escalate or fail.

The policy is the specialist's ``escalation`` (else its model's); without one a call is still checked, so an
answer that breaks its contract or its tool schemas never leaves as a 200: it becomes an error with the reason.
The verdict itself is the pure :func:`cluster.escalation.decide`; this module only makes the calls and keeps the
record (``slmfleet.escalations``, attempts, cost against the LLM tier) that the answer carries.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cluster.cost import CostSummary, PriceBook
from cluster.escalation import CallOutcome, decide, escalates_when_unavailable, is_capacity_escalation
from cluster.pipeline_spec import EscalationPolicy
from cluster.spec import FleetSpec
from deployments.model.chat_request import contract_from_spec
from deployments.protocol import GenerationError, GenerationRequest, GenerationResult, Readiness, StreamDelta
from deployments.router.escalation_budget import EscalationBudget

ModelCall = Callable[[str, GenerationRequest], Awaitable[GenerationResult]]
DEFAULT_MAX_TOKENS = 256
# No policy: check the answer, never escalate, and retry a cut answer once with twice the room under the same
# schema bound, which it cannot overrun (schemas are bounded at two characters a token; see json_budget).
CHECK_ONLY = EscalationPolicy(to=None, retries=1)


@dataclass
class ChatOutcome:
    """The accepted answer of one choice (or why there is none) and how it was reached."""

    result: GenerationResult
    attempts: list[dict[str, Any]] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error(self) -> GenerationError | None:
        return self.result.error

    @property
    def served_by(self) -> str:
        return self.result.model


@dataclass(frozen=True)
class ChatTarget:
    """Where a chat call goes first and under which policy."""

    model: str
    specialist: str | None
    policy: EscalationPolicy
    can_escalate: bool
    default_max_tokens: int


def chat_target(spec: FleetSpec, model: str, specialist: str | None) -> ChatTarget:
    """The policy of a specialist (else of its model, else check-only) and whether it may escalate from here."""
    spec_of = spec.specialists.get(specialist) if specialist else None
    policy = (spec_of.escalation if spec_of else None) or spec.models[model].escalation or CHECK_ONLY
    can_escalate = policy.to is not None and spec.models[model].tier != "llm"
    max_tokens = spec_of.sampling.max_tokens if spec_of else DEFAULT_MAX_TOKENS
    return ChatTarget(model, specialist, policy, can_escalate, max_tokens)


class ChatCaller:
    """Runs chat calls under their policy over a model caller (the router's Serve backend, or a fake in tests)."""

    def __init__(
        self,
        spec: FleetSpec,
        call: ModelCall,
        prices: PriceBook,
        timeout_s: float,
        on_escalation: Callable[[str, str], None] | None = None,
        *,
        unready: Readiness | None = None,
        budget: EscalationBudget | None = None,
    ) -> None:
        """``on_escalation(served_name, reason)`` sees every escalation (the router counts them in its metrics);
        ``unready(model)`` says why a model has no running replica (and wakes one at zero); ``budget`` caps
        capacity escalations to the LLM tier."""
        self.spec, self.call, self.prices, self.timeout_s = spec, call, prices, timeout_s
        self.on_escalation = on_escalation
        self.readiness = unready
        self.budget = budget

    async def unready(self, target: ChatTarget) -> GenerationResult | None:
        """The target model's error when it has no running replica (at zero and waking, or down) and the call may
        escalate for that reason: the LLM tier answers meanwhile, instead of the caller waiting out the start.
        None otherwise (the call then waits for the model, within the request timeout)."""
        if self.readiness is None or not escalates_when_unavailable(target.policy, target.can_escalate):
            return None
        error = await self.readiness(target.model)
        if error is None:
            return None
        message = f"{error.message}; answered by '{target.policy.to}' meanwhile"
        return GenerationResult(model=target.model, error=GenerationError(error.kind, message))

    def contract(self, target: ChatTarget, request: GenerationRequest) -> Any:
        """The output contract a call is judged by: the request's response format, else its specialist's."""
        return request.contract or _specialist_contract(self.spec, target.specialist)

    async def answer(
        self, target: ChatTarget, request: GenerationRequest, first: GenerationResult | None = None
    ) -> ChatOutcome:
        """Call, judge, and retry or escalate until the policy accepts or gives up (bounded by the policy).

        ``first`` is the first call's result when it was already made (a stream that failed before its first byte).
        """
        outcome = ChatOutcome(GenerationResult(model=target.model))
        first = first or await self.unready(target)
        model, can_escalate, retries = target.model, target.can_escalate, 0
        max_tokens = request.max_tokens or target.default_max_tokens
        contract = self.contract(target, request)
        while True:
            result, first = first or await self._call(model, request), None
            verdict = decide(
                CallOutcome(result),
                contract,
                target.policy,
                max_tokens=max_tokens,
                retries_done=retries,
                can_escalate=can_escalate,
                tools=request.tools,
            )
            outcome.result = result
            outcome.attempts.append(_attempt(result, verdict.action, verdict.reason, verdict.detail))
            if verdict.action == "accept":
                return outcome
            if verdict.action == "fail":
                factor = max(2.0, target.policy.retry_max_tokens_factor)
                outcome.result = _failed(result, verdict.reason, verdict.detail, max_tokens, factor)
                return outcome
            if verdict.action == "retry":  # more room, same schema bound (see pipeline runner's _retry_request)
                first_budget = request.schema_tokens or max_tokens
                retries, max_tokens = retries + 1, verdict.max_tokens or max_tokens
                request = replace(request, max_tokens=max_tokens, schema_tokens=first_budget)
                continue
            target_model = str(target.policy.to)
            refused = await self._over_budget(model, target_model, result)
            if refused is not None:
                outcome.result = refused
                return outcome
            outcome.escalations.append(
                {"from_model": model, "to_model": target_model, "reason": verdict.reason, "detail": verdict.detail}
            )
            if self.on_escalation is not None:
                self.on_escalation(target.specialist or target.model, str(verdict.reason))
            request = replace(request, escalated_from=model, escalation_reason=str(verdict.reason))
            model, can_escalate, retries = target_model, False, 0

    async def _over_budget(self, model: str, target: str, result: GenerationResult) -> GenerationResult | None:
        """An ``overloaded`` refusal when this is a capacity escalation and the LLM tier's budget is spent."""
        if self.budget is None or not is_capacity_escalation(CallOutcome(result)):
            return None
        wait = await self.budget.take(target)
        if wait is None:
            return None
        return GenerationResult(
            model=model, error=GenerationError("overloaded", self.budget.refusal(model, target), wait)
        )

    async def _call(self, model: str, request: GenerationRequest) -> GenerationResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.call(model, request)
        except TimeoutError:
            error = GenerationError("timeout", f"no answer from model '{model}' within {self.timeout_s:.0f} s")
            return GenerationResult(model=model, error=error)

    def report(self, outcomes: list[ChatOutcome], llm: str | None) -> dict[str, Any]:
        """``slmfleet`` of the answer: where it was served, escalations, attempts, and cost against the LLM tier."""
        attempts = [a for o in outcomes for a in o.attempts]
        costs = [self.prices.cost(a["model"], a["tokens_in"] + a["tokens_out"]) for a in attempts]
        # as for pipeline steps: what the LLM tier would have charged for the answer given (the last attempt)
        counterfactual = [self._llm_cost(llm, o.attempts[-1]) for o in outcomes if o.attempts]
        report: dict[str, Any] = {
            "served_by": outcomes[0].served_by,
            "escalations": [e for o in outcomes for e in o.escalations],
            "attempts": attempts,
            "cost": asdict(CostSummary.of(costs, counterfactual, llm)),
        }
        engine_s = [o.result.extra.get("engine_s") for o in outcomes]
        if all(isinstance(s, float) for s in engine_s):
            report["engine_s"] = sum(engine_s)  # type: ignore[arg-type]
        if (rate := outcomes[0].result.extra.get("tokens_per_hour")) is not None:
            report["tokens_per_hour"] = rate
        return report

    def _llm_cost(self, llm: str | None, attempt: dict[str, Any]) -> float | None:
        return self.prices.cost(llm, attempt["tokens_in"] + attempt["tokens_out"]) if llm else None


def needs_whole_answer(target: ChatTarget, request: GenerationRequest, contract: Any) -> bool:
    """A streamed call that must be judged whole before its first byte: its output is constrained (a contract or
    tools), or it may be judged unsure at the end, so a failing answer must become an escalation or an error
    rather than half a stream. Free text otherwise streams as generated (an unavailable model is escalated before
    the first byte)."""
    policy = target.policy
    unsure_possible = target.can_escalate and policy.min_confidence > 0 and "low_confidence" in policy.reasons
    return contract is not None or request.tools is not None or unsure_possible


async def replay(outcome: ChatOutcome) -> AsyncIterator[StreamDelta | GenerationResult]:
    """A judged, finished answer as a stream: its text in one delta, each tool call in its own, then the result."""
    result = outcome.result
    if result.error is None:
        if result.text:
            yield StreamDelta(result.text, logprobs=result.token_logprobs)
        for call in result.tool_calls:
            yield StreamDelta(tool_call=call)
    yield result


def _specialist_contract(spec: FleetSpec, specialist: str | None) -> Any:
    return contract_from_spec(spec.specialists[specialist].output) if specialist else None


def _attempt(result: GenerationResult, action: str, reason: str | None, detail: str) -> dict[str, Any]:
    return {
        "model": result.model,
        "tokens_in": result.prompt_tokens,
        "tokens_out": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "action": action,
        "reason": reason,
        "detail": detail,
        "engine_s": result.extra.get("engine_s"),
    }


def _failed(
    result: GenerationResult, reason: str | None, detail: str, max_tokens: int, factor: float
) -> GenerationResult:
    """A failing verdict as an error result: the model's own error, a cut the client can fix, or invalid output."""
    if result.error is not None:
        return result
    if reason == "contract" and result.finish_reason == "length":
        more = math.ceil(max_tokens * factor)
        message = f"the answer did not fit max_tokens {max_tokens} ({detail}); raise max_tokens (e.g. to {more})"
        return replace(result, error=GenerationError("bad_request", message))
    return replace(result, error=GenerationError("output_invalid", f"the model's answer failed its {reason}: {detail}"))
