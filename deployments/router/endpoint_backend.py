"""Models served by an outside OpenAI-compatible API (``models.<name>.endpoint``): the hosted LLM most fleets
escalate to, or vLLM running elsewhere.

The router calls such a model where it would call an engine: a :class:`GenerationRequest` goes out as an OpenAI
chat request (the specialist's instructions, sampling and contract applied here, since no model replica does it),
and the answer, whole or streamed, comes back as the fleet's own :class:`GenerationResult` / :class:`StreamDelta`.
The API's failures become failure data with a kind, as an engine's do: a refusal for load (429/503) is
``overloaded`` with the API's ``Retry-After``; an API that cannot be reached, answers 5xx, refuses the fleet's key or
answers 200 without a completion is ``engine_dead`` (retried once, then escalated or a 503); one that stalls past
``timeout_s`` is a ``timeout``; a request it rejects as malformed is the client's ``bad_request`` with the API's
reason. :func:`chat_body` is pure and unit-tested.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from cluster.chat_messages import with_instructions
from cluster.spec import EndpointSpec
from deployments.model.chat_request import base_sampling, request_contract
from deployments.protocol import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    ToolCall,
    Tools,
    failure,
)

log = logging.getLogger(__name__)
OVERLOAD_STATUSES = frozenset({429, 503})
DEFAULT_RETRY_AFTER_S = 1
HTTP_OK = 200


def chat_body(endpoint: EndpointSpec, request: GenerationRequest) -> dict[str, Any] | GenerationError:
    """The OpenAI chat request for ``request`` (its specialist's settings applied), or why the API cannot take it."""
    specialist = request.specialist_spec
    sampling = base_sampling(request, specialist)
    body: dict[str, Any] = {
        "model": endpoint.model,
        "messages": with_instructions(request.messages, specialist.instructions if specialist else ""),
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
    }
    # OpenAI's API takes the limit as max_completion_tokens (its reasoning models refuse max_tokens); vLLM both
    limit = "max_tokens" if endpoint.structured_outputs == "vllm" else "max_completion_tokens"
    body[limit] = sampling["max_tokens"]
    if request.stop:
        body["stop"] = list(request.stop)
    for key in ("seed", "presence_penalty", "frequency_penalty", "logit_bias"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.logprobs:
        body.update(logprobs=True, top_logprobs=request.top_logprobs)
    if request.extra_sampling:
        if endpoint.structured_outputs != "vllm":
            names = ", ".join(sorted(request.extra_sampling))
            return GenerationError(
                "bad_request", f"this model is served by an OpenAI API, which takes no {names}; remove them"
            )
        body.update(request.extra_sampling)
    if request.tools is not None:
        body.update(_tool_fields(request.tools))
    contract = request_contract(request, specialist)
    if contract is not None and not contract.is_empty():
        body.update(_contract_fields(endpoint, contract))
    return body


def _tool_fields(tools: Tools) -> dict[str, Any]:
    functions = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools.tools
    ]
    choice: Any = tools.choice
    if choice not in ("none", "auto", "required"):
        choice = {"type": "function", "function": {"name": tools.choice}}
    return {"tools": functions, "tool_choice": choice, "parallel_tool_calls": tools.parallel}


def _contract_fields(endpoint: EndpointSpec, contract: Any) -> dict[str, Any]:
    """vLLM takes all three contracts; OpenAI's API takes a JSON schema (a choice or regex answer is checked by the
    router's contract check, like any answer)."""
    if endpoint.structured_outputs == "vllm":
        if contract.json_schema is not None:
            return {"structured_outputs": {"json": contract.json_schema}}
        if contract.choice is not None:
            return {"structured_outputs": {"choice": list(contract.choice)}}
        return {"structured_outputs": {"regex": contract.regex}}
    if contract.json_schema is None:
        return {}
    schema = {"name": "output", "schema": contract.json_schema}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def result_from_answer(model: str, answer: Mapping[str, Any]) -> GenerationResult:
    """An OpenAI chat completion (the first choice) as the fleet's result."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [_tool_call(call) for call in message.get("tool_calls") or []]
    usage = answer.get("usage") or {}
    entries = (choice.get("logprobs") or {}).get("content")
    return GenerationResult(
        model=model,
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        mean_logprob=_mean_logprob(entries),
        tool_calls=calls,
        token_logprobs=entries,
    )


def result_from_response(model: str, response: httpx.Response) -> GenerationResult:
    """A plain call's HTTP answer as the fleet's result: a refusal, a body that is no completion, or the answer."""
    if response.status_code != HTTP_OK:
        return failure_from_status(model, response)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not answer.get("choices"):  # not JSON, or a gateway's error behind a 200
        log.warning("endpoint of model %s answered 200 without a completion: %.300s", model, response.text)
        return failure(model, "engine_dead", f"model '{model}' is unavailable: its endpoint's answer is no completion")
    return result_from_answer(model, answer)


def _tool_call(call: Mapping[str, Any]) -> ToolCall:
    function = call.get("function") or {}
    return ToolCall(str(call.get("id") or ""), str(function.get("name") or ""), str(function.get("arguments") or ""))


def _mean_logprob(entries: list[dict[str, Any]] | None) -> float | None:
    if not entries:
        return None
    return sum(float(e.get("logprob", 0.0)) for e in entries) / len(entries)


def failure_from_status(model: str, response: httpx.Response) -> GenerationResult:
    """The API's refusal as failure data (see the module docstring for the mapping)."""
    status, reason = response.status_code, _error_message(response)
    if status in OVERLOAD_STATUSES:
        retry_after = _retry_after(response.headers.get("retry-after"))
        message = f"model '{model}' is at capacity at its endpoint; retry later"
        return failure(model, "overloaded", message, retry_after, expected_wait_s=float(retry_after))
    if status in (400, 413, 422):
        too_long = "context" in reason.lower() and "length" in reason.lower()
        kind = "context_length_exceeded" if too_long else "bad_request"
        return failure(model, kind, f"model '{model}' refused the request: {reason}")
    log.warning("endpoint of model %s answered %d: %s", model, status, reason)
    return failure(model, "engine_dead", f"model '{model}' is unavailable: its endpoint answered {status}")


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text[:300]
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


def _retry_after(header: str | None) -> int:
    try:
        return max(1, int(float(header))) if header else DEFAULT_RETRY_AFTER_S
    except (ValueError, OverflowError):  # not a number of seconds (an HTTP date, or inf)
        return DEFAULT_RETRY_AFTER_S


def failure_from_exception(model: str, exc: httpx.HTTPError) -> GenerationResult:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return failure(model, "timeout", f"model '{model}' did not answer in time at its endpoint")
    log.warning("endpoint of model %s failed: %r", model, exc)
    return failure(model, "engine_dead", f"model '{model}' is unavailable: its endpoint did not answer")


class StreamedAnswer:
    """An OpenAI chat stream's chunks gathered into the fleet's deltas and final result."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}  # tool calls arrive in pieces, keyed by index
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] = {}
        self.logprobs: list[dict[str, Any]] = []

    def take(self, chunk: Mapping[str, Any]) -> StreamDelta | None:
        """One chunk in; the text delta to send on, if any."""
        self.usage = chunk.get("usage") or self.usage
        choice = (chunk.get("choices") or [None])[0]
        if not choice:
            return None
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta") or {}
        for piece in delta.get("tool_calls") or []:
            call = self.calls.setdefault(int(piece.get("index", 0)), {"id": "", "name": "", "arguments": ""})
            function = piece.get("function") or {}
            call["id"] = piece.get("id") or call["id"]
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""
        entries = (choice.get("logprobs") or {}).get("content") or None
        self.logprobs += entries or []
        text = delta.get("content") or ""
        if not text:
            return None
        self.text.append(text)
        return StreamDelta(text=text, logprobs=entries)

    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(self.calls.items())]

    def result(self) -> GenerationResult:
        return GenerationResult(
            model=self.model,
            text="".join(self.text),
            finish_reason=self.finish_reason,
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
            completion_tokens=int(self.usage.get("completion_tokens") or 0),
            mean_logprob=_mean_logprob(self.logprobs),
            tool_calls=self.tool_calls(),
            token_logprobs=self.logprobs or None,
        )


class EndpointCaller:
    """One router replica's calls to outside APIs: one pooled HTTP client, and calls in flight counted per model
    against its ``max_concurrent_requests`` (a call beyond it is refused at once, not queued). Kept across the
    replica's reconfigures."""

    def __init__(
        self, environ: Mapping[str, str] = os.environ, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """``environ`` holds the API keys (``api_key_env``); ``transport`` lets a test answer in-process."""
        self.environ = environ
        self._transport = transport
        self._client: httpx.AsyncClient | None = None  # made on first use, inside the replica's event loop
        self.in_flight: dict[str, int] = {}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, limits=httpx.Limits(max_connections=None))
        return self._client

    def _request(self, endpoint: EndpointSpec, body: dict[str, Any]) -> httpx.Request:
        headers = {}
        key = self.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = endpoint.url.rstrip("/") + "/chat/completions"
        timeout = httpx.Timeout(endpoint.timeout_s, connect=min(10.0, endpoint.timeout_s))
        return self._http().build_request("POST", url, json=body, headers=headers, timeout=timeout)

    def _admit(self, model: str, endpoint: EndpointSpec) -> GenerationResult | None:
        if self.in_flight.get(model, 0) >= endpoint.max_concurrent_requests:
            message = f"model '{model}' has {endpoint.max_concurrent_requests} calls in flight at its endpoint"
            # a place frees as soon as one call ends: no wait foreseen, so the refusal memo holds back no one else
            return failure(model, "overloaded", f"{message}; retry later", DEFAULT_RETRY_AFTER_S, expected_wait_s=0.0)
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        return None

    def _done(self, model: str) -> None:
        self.in_flight[model] -= 1

    async def complete(self, model: str, endpoint: EndpointSpec, request: GenerationRequest) -> GenerationResult:
        body = chat_body(endpoint, request)
        if isinstance(body, GenerationError):
            return GenerationResult(model=model, error=body)
        refused = self._admit(model, endpoint)
        if refused is not None:
            return refused
        try:
            response = await self._http().send(self._request(endpoint, body))
        except httpx.HTTPError as exc:
            return failure_from_exception(model, exc)
        finally:
            self._done(model)
        return result_from_response(model, response)

    async def stream(
        self, model: str, endpoint: EndpointSpec, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Text deltas as they arrive; tool calls whole at the end (as the fleet's engines send them); then the
        result."""
        body = chat_body(endpoint, request)
        if isinstance(body, GenerationError):
            yield GenerationResult(model=model, error=body)
            return
        refused = self._admit(model, endpoint)
        if refused is not None:
            yield refused
            return
        body.update(stream=True, stream_options={"include_usage": True})
        answer = StreamedAnswer(model)
        failed: GenerationResult | None = None  # yielded only once the call's place and response are released
        try:
            response = await self._http().send(self._request(endpoint, body), stream=True)
            try:
                if response.status_code != HTTP_OK:
                    await response.aread()
                    failed = failure_from_status(model, response)
                else:
                    async for delta in _deltas(response, answer):
                        yield delta
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            failed = failure_from_exception(model, exc)
        except ValueError:  # a chunk that is not JSON
            failed = failure(model, "engine_dead", f"model '{model}' is unavailable: its endpoint's stream is not JSON")
        finally:
            self._done(model)
        if failed is None and answer.finish_reason is None:  # closed before its last chunk: cut, not whole
            failed = failure(model, "engine_dead", f"model '{model}' is unavailable: its endpoint's stream was cut")
        if failed is not None:
            yield failed
            return
        for call in answer.tool_calls():
            yield StreamDelta(tool_call=call)
        yield answer.result()


async def _deltas(response: httpx.Response, answer: StreamedAnswer) -> AsyncIterator[StreamDelta]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # SSE comments and blank separators
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        delta = answer.take(json.loads(data))
        if delta is not None:
            yield delta
