"""HTTP for agent pipelines: ``POST /v1/pipelines/{name}/runs`` and ``model: "pipeline:<name>"`` in chat.

The runner does the work (see :mod:`deployments.pipeline.runner`); this module only translates between HTTP and
its results, in OpenAI's shapes where a chat client is on the other end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.pipeline.result import PipelineResult
from deployments.pipeline.runner import PipelineRunner, UnknownPipelineError
from deployments.router.openai_api import ChatCompletionRequest, chunk_body, error_response, new_id

PIPELINE_PREFIX = "pipeline:"
# The pipeline a model call belongs to, for metrics tags; asyncio copies it into the runner's tasks.
CURRENT_PIPELINE: ContextVar[str] = ContextVar("slmfleet_pipeline", default="")


class PipelineRunRequest(BaseModel):
    """Body of ``POST /v1/pipelines/{name}/runs``."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False


def add_pipeline_routes(app: FastAPI, runner: PipelineRunner) -> None:
    """Register the pipeline run endpoint on the router's app."""

    @app.post("/v1/pipelines/{name}/runs")
    async def run_pipeline(name: str, body: PipelineRunRequest) -> Response:
        if name not in runner.pipelines:
            return _unknown(name, runner)
        CURRENT_PIPELINE.set(name)
        if body.stream:
            events = runner.run_events(name, body.inputs)
            return StreamingResponse(
                _sse(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return JSONResponse((await runner.run(name, body.inputs)).to_dict())


async def _sse(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for event in events:
        yield event.sse()


def _unknown(name: str, runner: PipelineRunner) -> Response:
    known = ", ".join(runner.pipelines) or "(none)"
    return error_response(404, f"No pipeline named '{name}'. Pipelines: {known}", "pipeline_not_found", "name")


def chat_inputs(body: ChatCompletionRequest) -> dict[str, Any]:
    """A chat request as pipeline inputs: the last user message, and the whole conversation."""
    messages = [m.model_dump() for m in body.messages]
    users = [m for m in messages if m["role"] == "user"]
    last = users[-1]["content"] if users else messages[-1]["content"]
    return {"message": last if isinstance(last, str) else json.dumps(last), "messages": messages}


async def chat_via_pipeline(body: ChatCompletionRequest, runner: PipelineRunner | None) -> Response:
    """Answer a chat completion whose ``model`` is ``pipeline:<name>`` with the pipeline's final output."""
    name = body.model.removeprefix(PIPELINE_PREFIX)
    if runner is None or name not in runner.pipelines:
        return error_response(404, f"The model '{body.model}' does not exist.", "model_not_found", "model")
    CURRENT_PIPELINE.set(name)
    try:
        result = await runner.run(name, chat_inputs(body))
    except UnknownPipelineError as exc:
        return error_response(404, str(exc), "model_not_found", "model")
    request_id = new_id("chatcmpl")
    if body.stream:
        return StreamingResponse(_one_chunk_stream(request_id, body.model, result), media_type="text/event-stream")
    return JSONResponse(pipeline_completion(request_id, body.model, result))


def reply_text(result: PipelineResult) -> str:
    if isinstance(result.output, str):
        return result.output
    return json.dumps(result.output)


def pipeline_completion(request_id: str, served_as: str, result: PipelineResult) -> dict[str, Any]:
    """OpenAI chat completion whose message is the pipeline's output; the whole run rides along under slmfleet."""
    return {
        **chunk_body(request_id, served_as, {}),
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply_text(result)},
                "finish_reason": "stop" if result.status == "ok" else "error",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": result.tokens_in,
            "completion_tokens": result.tokens_out,
            "total_tokens": result.tokens_in + result.tokens_out,
        },
        "slmfleet": result.to_dict(),
    }


async def _one_chunk_stream(request_id: str, served_as: str, result: PipelineResult) -> AsyncIterator[str]:
    for delta, finish in (({"role": "assistant", "content": reply_text(result)}, None), ({}, "stop")):
        yield f"data: {json.dumps(chunk_body(request_id, served_as, delta, finish))}\n\n"
    yield "data: [DONE]\n\n"
