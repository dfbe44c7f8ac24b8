"""HTTP for agent pipelines: ``POST /v1/pipelines/{name}/runs`` and ``model: "pipeline:<name>"`` in chat.

The runner does the work (see :mod:`deployments.pipeline.runner`); this module only translates between HTTP and
its results, in OpenAI's shapes where a chat client is on the other end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.pipeline.idempotency import HEADER, IdempotentRuns
from deployments.pipeline.result import StepEvent
from deployments.pipeline.runner import PipelineRunner
from deployments.router.openai_api import (
    ChatCompletionRequest,
    chunk_body,
    error_body,
    error_response,
    new_id,
    retry_after_headers,
)
from deployments.router.stream_guard import HEARTBEAT_S, SSE_HEARTBEAT, guarded, with_heartbeat

PIPELINE_PREFIX = "pipeline:"
# The pipeline a model call belongs to, for metrics tags; asyncio copies it into the runner's tasks.
CURRENT_PIPELINE: ContextVar[str] = ContextVar("slmfleet_pipeline", default="")


class PipelineRunRequest(BaseModel):
    """Body of ``POST /v1/pipelines/{name}/runs``."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False


def add_pipeline_routes(app: FastAPI, runner: PipelineRunner, idempotent: IdempotentRuns | None = None) -> None:
    """Register the pipeline run endpoint on the router's app; ``idempotent`` honours ``Idempotency-Key``."""

    @app.post("/v1/pipelines/{name}/runs")
    async def run_pipeline(
        name: str, body: PipelineRunRequest, idempotency_key: str | None = Header(None, alias=HEADER)
    ) -> Response:
        if name not in runner.pipelines:
            return _unknown(name, runner)
        CURRENT_PIPELINE.set(name)
        if idempotency_key is not None:
            return await _keyed_run(runner, idempotent or IdempotentRuns(None), name, idempotency_key, body)
        if body.stream:
            events = guarded(_sse(runner.run_events(name, body.inputs)), runner.stream_timeout_s, _error_event)
            events = with_heartbeat(events, HEARTBEAT_S, SSE_HEARTBEAT)  # a long step sends nothing meanwhile
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return JSONResponse((await runner.run(name, body.inputs)).to_dict())


async def _sse(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for event in events:
        yield event.sse()


async def _keyed_run(
    runner: PipelineRunner, idempotent: IdempotentRuns, name: str, key: str, body: PipelineRunRequest
) -> Response:
    """A run under an ``Idempotency-Key``: at most once per key; a repeat gets the first run's result."""
    if body.stream:
        message = f"{HEADER} applies to runs without stream: true (a replay has no live events); drop one of them"
        return error_response(400, message, "idempotency_key_with_stream", "stream")

    async def execute() -> dict[str, Any]:
        return (await runner.run(name, body.inputs)).to_dict()

    outcome = await idempotent.run(name, key, body.inputs, execute)
    headers = retry_after_headers(outcome.status, outcome.body) or {}
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)


def _error_event(code: str, message: str) -> str:
    """A run's stream cut short (deadline, internal failure): one last ``error`` event."""
    return f"event: error\ndata: {json.dumps({'type': 'error', **error_body(message, 'server_error', code)})}\n\n"


def _unknown(name: str, runner: PipelineRunner) -> Response:
    known = ", ".join(runner.pipelines) or "(none)"
    return error_response(404, f"No pipeline named '{name}'. Pipelines: {known}", "pipeline_not_found", "name")


def chat_inputs(body: ChatCompletionRequest) -> dict[str, Any]:
    """A chat request as pipeline inputs: the last user message, and the whole conversation."""
    messages = [m.model_dump() for m in body.messages]
    users = [m for m in messages if m["role"] == "user"]
    last = users[-1]["content"] if users else messages[-1]["content"]
    return {"message": last if isinstance(last, str) else json.dumps(last), "messages": messages}


# A failed run's status by the kind of its failing step: the caller's input, a model that is down, or an answer
# that broke its contract after every escalation.
STATUS_BY_STEP_ERROR = {"condition": 400, "error": 400, "unavailable": 503, "contract": 502, "tool": 502}


def _unknown_model(body: ChatCompletionRequest) -> tuple[int, dict[str, Any]]:
    return 404, error_body(
        f"The model '{body.model}' does not exist.", "invalid_request_error", "model_not_found", "model"
    )


def run_error(run: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A failed run (``PipelineResult.to_dict()``) as an OpenAI error: the failing step, why, and the run id."""
    error = run.get("error") or {}
    kind = error.get("kind", "error")
    status = STATUS_BY_STEP_ERROR.get(kind, 500)
    message = f"pipeline '{run['pipeline']}' failed at step '{error.get('step') or '?'}' ({kind}): "
    message += f"{error.get('message') or 'no detail'} [run {run['run_id']}]"
    err_type = "invalid_request_error" if status < 500 else "server_error"  # noqa: PLR2004
    return status, error_body(message, err_type, f"pipeline_{kind}")


async def pipeline_chat(body: ChatCompletionRequest, runner: PipelineRunner | None) -> tuple[int, dict[str, Any]]:
    """A chat completion whose ``model`` is ``pipeline:<name>``: the run's output, or its failure as an error."""
    name = body.model.removeprefix(PIPELINE_PREFIX)
    if runner is None or name not in runner.pipelines:
        return _unknown_model(body)
    CURRENT_PIPELINE.set(name)
    run = (await runner.run(name, chat_inputs(body))).to_dict()
    if run["status"] != "ok":
        return run_error(run)
    return 200, pipeline_completion(new_id("chatcmpl"), body.model, run)


async def pipeline_chunks(
    body: ChatCompletionRequest, runner: PipelineRunner | None
) -> tuple[int, dict[str, Any]] | AsyncIterator[dict[str, Any]]:
    """A streamed pipeline-as-chat. The output step's text goes out as the model generates it when the runner
    can stream it (``step_delta`` events); otherwise the output leaves when the run ends. A run that fails before
    any text is a plain HTTP error; one that fails after ends the stream with an error event."""
    name = body.model.removeprefix(PIPELINE_PREFIX)
    if runner is None or name not in runner.pipelines:
        return _unknown_model(body)
    CURRENT_PIPELINE.set(name)
    events = runner.run_events(name, chat_inputs(body))
    request_id = new_id("chatcmpl")
    async for event in events:
        if event.type == "step_delta":
            return _live_chunks(event, events, request_id, body.model)
        if event.type == "pipeline_finished":
            if event.data["status"] != "ok":
                return run_error(event.data)
            return _answer_chunks(pipeline_completion(request_id, body.model, event.data))
    return 500, error_body("the pipeline ended without a result", "server_error", "internal")


async def _live_chunks(
    first: StepEvent, events: AsyncIterator[StepEvent], request_id: str, served_as: str
) -> AsyncIterator[dict[str, Any]]:
    attempt = first.data["attempt"]
    yield chunk_body(request_id, served_as, {"role": "assistant", "content": first.data["text"]})
    async for event in events:
        if event.type == "step_delta" and event.data["attempt"] != attempt:
            yield error_body(
                f"the output step's model failed after part of its answer was sent; the run goes on as {event.run_id}",
                "server_error",
                "stream_interrupted",
            )
            return
        if event.type == "step_delta":
            yield chunk_body(request_id, served_as, {"content": event.data["text"]})
        elif event.type == "pipeline_finished":
            if event.data["status"] != "ok":
                yield run_error(event.data)[1]
                return
            final = chunk_body(request_id, served_as, {}, "stop")
            final["slmfleet"] = event.data
            yield final


async def _answer_chunks(answer: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    request_id, served_as = answer["id"], answer["model"]
    content = answer["choices"][0]["message"]["content"]
    yield chunk_body(request_id, served_as, {"role": "assistant", "content": content})
    final = chunk_body(request_id, served_as, {}, "stop")
    final["slmfleet"] = answer["slmfleet"]
    yield final


def reply_text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output)


def pipeline_completion(request_id: str, served_as: str, run: dict[str, Any]) -> dict[str, Any]:
    """OpenAI chat completion whose message is the pipeline's output; the whole run rides along under slmfleet."""
    return {
        **chunk_body(request_id, served_as, {}),
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply_text(run["output"])},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": run["tokens_in"],
            "completion_tokens": run["tokens_out"],
            "total_tokens": run["tokens_in"] + run["tokens_out"],
        },
        "slmfleet": run,
    }
