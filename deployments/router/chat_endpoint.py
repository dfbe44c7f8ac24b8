"""``/v1/chat/completions`` as data: a request in, ``(status, body)`` or a stream of chunk dicts out.

Kept apart from HTTP so the Responses API (:mod:`deployments.router.responses_api`) runs on the very same path:
it hands a chat-completions body to :meth:`ChatEndpoint.complete` / :meth:`ChatEndpoint.chunks`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Protocol

from pydantic import ValidationError

from cluster.cost import PriceBook
from cluster.pipeline_spec import EscalationPolicy
from cluster.spec import FleetSpec
from deployments.pipeline.routes import PIPELINE_PREFIX, pipeline_chat, pipeline_chunks
from deployments.pipeline.runner import PipelineRunner
from deployments.protocol import GenerationError, GenerationRequest, GenerationResult, StreamDelta
from deployments.router.chat import ChatCaller, ChatOutcome, ChatTarget, chat_target, needs_whole_answer, replay
from deployments.router.escalation_budget import EscalationBudget
from deployments.router.openai_api import (
    STATUS_BY_KIND,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    error_body,
    tool_call_body,
    usage,
    validation_error_body,
)
from deployments.router.promotions import Match, PromotionRouting
from deployments.router.stream_guard import guarded

Answer = tuple[int, dict[str, Any]]


class ModelBackend(Protocol):
    """How the router reaches model deployments (Serve handles in production, a fake in unit tests)."""

    async def complete(self, model: str, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]: ...

    async def health(self) -> dict[str, dict[str, Any]]: ...

    async def unready(self, model: str) -> GenerationError | None: ...


def generation_error(error: GenerationError) -> Answer:
    status = STATUS_BY_KIND.get(error.kind, 500)
    err_type = "invalid_request_error" if status < 500 else "server_error"  # noqa: PLR2004
    return status, error_body(error.message, err_type, error.kind, retry_after_s=error.retry_after_s)


def resolve_target(spec: FleetSpec, name: str) -> tuple[str, str | None] | None:
    """(model deployment, specialist) for a request's ``model`` field, or None when nothing has that name."""
    if name in spec.models:
        return name, None
    if name in spec.specialists:
        return spec.specialists[name].model, name
    return None


class ChatEndpoint:
    """Chat completions on models, specialists (with their escalation policy) and ``pipeline:<name>``."""

    def __init__(
        self,
        spec: FleetSpec,
        backend: ModelBackend,
        prices: PriceBook,
        llm: str | None,
        runner: PipelineRunner | None = None,
        *,
        on_escalation: Callable[[str, str], None] | None = None,
        budget: EscalationBudget | None = None,
        promotions: PromotionRouting | None = None,
    ) -> None:
        """``promotions``: tasks promoted from the LLM tier to specialists (calls that match are routed to them)."""
        self.spec, self.backend, self.llm, self.runner = spec, backend, llm, runner
        self.promotions = promotions
        timeout_s = spec.server.request_timeout_s
        self.caller = ChatCaller(
            spec, backend.complete, prices, timeout_s, on_escalation, unready=backend.unready, budget=budget
        )

    @staticmethod
    def parse(data: dict[str, Any]) -> ChatCompletionRequest | Answer:
        try:
            return ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            return 400, validation_error_body(exc.errors())

    def _target(self, body: ChatCompletionRequest) -> ChatTarget | Answer:
        """The model or specialist the request names, with its policy; a 404 when nothing has that name."""
        target = resolve_target(self.spec, body.model)
        return self._unknown(body.model) if target is None else chat_target(self.spec, *target)

    def _unknown(self, name: str) -> Answer:
        known = ", ".join(self.spec.served_names())
        message = f"The model '{name}' does not exist. Served: {known}"
        return 404, error_body(message, "invalid_request_error", "model_not_found", "model")

    async def _promoted(self, chat: ChatTarget, body: ChatCompletionRequest) -> tuple[ChatTarget, Match | None]:
        """The target after promotions: a call to an LLM-tier model whose task a live promotion took over goes to
        that task's specialist, with the LLM as its escalation target (the safety net)."""
        if self.promotions is None or chat.specialist is not None or body.n != 1:
            return chat, None
        match = await self.promotions.match(chat.model, body.to_generation(None))
        if match is None or match.promotion.phase != "live":
            return chat, match
        name = match.promotion.specialist
        own = chat_target(self.spec, self.spec.specialists[name].model, name)
        policy = own.policy if own.policy.to else EscalationPolicy(to=chat.model, reasons=["contract", "unavailable"])
        return replace(own, policy=policy, can_escalate=True), match

    async def complete(self, body: ChatCompletionRequest) -> Answer:
        """A whole answer: ``n`` choices, each judged by its policy (retried or escalated), or an error."""
        if body.model.startswith(PIPELINE_PREFIX):
            return await pipeline_chat(body, self.runner)
        chat = self._target(body)
        if isinstance(chat, tuple):
            return chat
        chat, match = await self._promoted(chat, body)
        requests = [body.to_generation(chat.specialist, i) for i in range(body.n)]
        outcomes = await asyncio.gather(*(self.caller.answer(chat, r) for r in requests))
        failed = next((o for o in outcomes if o.error is not None), None)
        if failed is not None:
            return generation_error(failed.error)  # type: ignore[arg-type]
        report = self.caller.report(list(outcomes), self.llm)
        if match is not None and self.promotions is not None:
            report["promotion"] = match.label()
            if self.promotions.wants_sample(match) and not outcomes[0].escalations:
                self.promotions.sample(match, body.to_generation(None), outcomes[0].result)
        return 200, completion_body(requests[0].request_id, body.model, [o.result for o in outcomes], report)

    async def _first_item(
        self, model: str, items: AsyncIterator[StreamDelta | GenerationResult]
    ) -> StreamDelta | GenerationResult | None:
        """The stream's first item within the request timeout; a model silent that long counts as unavailable."""
        timeout_s = self.spec.server.request_timeout_s
        try:
            return await asyncio.wait_for(anext(items, None), timeout_s)
        except TimeoutError:
            error = GenerationError("timeout", f"no first token from model '{model}' within {timeout_s:.0f} s")
            return GenerationResult(model=model, error=error)

    async def chunks(self, body: ChatCompletionRequest) -> Answer | AsyncIterator[dict[str, Any]]:
        """A streamed answer: an error before the first byte, or ChatCompletionChunk dicts (an error dict mid-way).

        A call that may escalate or whose output is constrained is judged whole first, then streamed. Every stream
        ends within ``server.stream_timeout_s`` and with an error dict if it fails (:mod:`stream_guard`).
        """
        answer = await self._open_stream(body)
        if isinstance(answer, tuple):
            return answer
        return guarded(answer, self.spec.server.stream_timeout_s, _stream_failure)

    async def _open_stream(self, body: ChatCompletionRequest) -> Answer | AsyncIterator[dict[str, Any]]:
        if body.model.startswith(PIPELINE_PREFIX):
            return await pipeline_chunks(body, self.runner)
        chat = self._target(body)
        if isinstance(chat, tuple):
            return chat
        chat, _ = await self._promoted(chat, body)  # streams are routed, not sampled
        request = body.to_generation(chat.specialist)
        report: dict[str, Any] | None = None
        whole = needs_whole_answer(chat, request, self.caller.contract(chat, request))
        items: AsyncIterator[StreamDelta | GenerationResult] | None = None
        first: StreamDelta | GenerationResult | None = None
        if not whole and (first := await self.caller.unready(chat)) is None:
            items = self.backend.stream(chat.model, request)
            first = await self._first_item(chat.model, items)
        if items is None or first is None or (isinstance(first, GenerationResult) and first.error is not None):
            failed = first if isinstance(first, GenerationResult) else None
            if items is not None:
                await items.aclose()  # the failed stream is done with: its model call ends before the fallback
            outcome = await self.caller.answer(chat, request, failed)  # judged whole; escalated as the policy says
            if outcome.error is not None:
                return generation_error(outcome.error)
            items, report = replay(outcome), self.caller.report([outcome], self.llm)
            first = await anext(items, None)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _chunks(first, items, request.request_id, body.model, include_usage=include_usage, report=report)


async def _chunks(
    first: StreamDelta | GenerationResult | None,
    items: AsyncIterator[StreamDelta | GenerationResult],
    request_id: str,
    served_as: str,
    *,
    include_usage: bool,
    report: dict[str, Any] | None,
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI chunks: the role, text deltas, tool calls (one delta each, with their index), the finish, usage."""
    yield chunk_body(request_id, served_as, {"role": "assistant", "content": ""})
    item, calls = first, 0
    while item is not None:
        if isinstance(item, StreamDelta) and item.tool_call is not None:
            yield chunk_body(request_id, served_as, {"tool_calls": [tool_call_body(item.tool_call, calls)]})
            calls += 1
        elif isinstance(item, StreamDelta):
            if item.text or item.logprobs:
                yield chunk_body(request_id, served_as, {"content": item.text}, logprobs=item.logprobs)
        elif item.error is not None:
            _, body = generation_error(item.error)
            yield body
        else:
            yield _final_chunk(request_id, served_as, item, report)
            if include_usage:
                yield {**chunk_body(request_id, served_as, {}), "choices": [], "usage": usage(item)}
        item = await anext(items, None)


def _stream_failure(code: str, message: str) -> dict[str, Any]:
    return error_body(message, "server_error", code)


def _final_chunk(
    request_id: str, served_as: str, result: GenerationResult, report: dict[str, Any] | None
) -> dict[str, Any]:
    chunk = chunk_body(request_id, served_as, {}, result.finish_reason or "stop")
    resumed = result.extra.get("resumed_after_chars")
    if resumed is not None:  # the replica died mid-answer and a live one continued it (ServeBackend._stream)
        report = {**(report or {}), "served_by": result.model, "resumed_after_chars": resumed}
    if report is not None:
        chunk["slmfleet"] = report
    return chunk


__all__ = ["ChatEndpoint", "ChatOutcome", "ModelBackend", "resolve_target"]
