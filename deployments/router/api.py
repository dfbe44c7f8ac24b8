"""The router's HTTP surface as a plain FastAPI app over a :class:`ModelBackend`.

Built by a function, not at import time, so unit tests drive it with a fake backend and the Serve ingress
builds it per replica with real deployment handles. Every error leaves in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.cost import CostSummary, PriceBook, llm_reference_model
from cluster.spec import FleetSpec
from deployments.pipeline.routes import PIPELINE_PREFIX, add_pipeline_routes, chat_via_pipeline
from deployments.pipeline.runner import PipelineRunner
from deployments.protocol import GenerationError, GenerationRequest, GenerationResult, StreamDelta
from deployments.router.openai_api import (
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    error_response,
    generation_error_response,
    usage,
)

OPEN_PATHS = frozenset({"/healthz"})
TRACER = trace.get_tracer("slmfleet.router")


class ModelBackend(Protocol):
    """How the API reaches model deployments (Serve handles in production, a fake in unit tests)."""

    async def complete(self, model: str, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]: ...

    async def health(self) -> dict[str, bool]: ...


def resolve_target(spec: FleetSpec, name: str) -> tuple[str, str | None] | None:
    """(model deployment, specialist) for a request's ``model`` field, or None when nothing has that name."""
    if name in spec.models:
        return name, None
    if name in spec.specialists:
        return spec.specialists[name].model, name
    return None


def build_api(
    spec: FleetSpec,
    backend: ModelBackend,
    api_keys: frozenset[str] = frozenset(),
    runner: PipelineRunner | None = None,
    prices: PriceBook | None = None,
) -> FastAPI:
    """The OpenAI-compatible app: chat completions, pipelines, model list, health; API keys enforced when given.

    ``prices`` is the router's live book (declared prices, or derived ones that follow measured throughput).
    """
    prices = prices or PriceBook.from_spec(spec)
    llm = llm_reference_model(spec)  # the counterfactual's model, fixed for the app's life
    app = FastAPI(title="slm-fleet router", docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    if api_keys:
        app.middleware("http")(_require_key(api_keys))
    app.middleware("http")(_trace_request)
    if runner is not None:
        add_pipeline_routes(app, runner)

    @app.get("/healthz")
    async def healthz() -> Response:
        models = await backend.health()
        status = 200 if models and all(models.values()) else 503
        return JSONResponse({"status": "ok" if status == 200 else "degraded", "models": models}, status)  # noqa: PLR2004

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": model_cards(spec)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        if body.model.startswith(PIPELINE_PREFIX):
            return await chat_via_pipeline(body, runner)
        return await answer_chat(spec, backend, body, prices, llm)

    return app


async def answer_chat(
    spec: FleetSpec, backend: ModelBackend, body: ChatCompletionRequest, prices: PriceBook, llm: str | None
) -> Response:
    """One chat completion on a model or specialist, plain or streamed."""
    target = resolve_target(spec, body.model)
    if target is None:
        known = ", ".join(spec.served_names())
        return error_response(
            404, f"The model '{body.model}' does not exist. Served: {known}", "model_not_found", "model"
        )
    model, specialist = target
    request = body.to_generation(specialist)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream_response(backend.stream(model, request), request.request_id, body.model, include_usage)
    timeout_s = spec.server.request_timeout_s
    try:
        result = await asyncio.wait_for(backend.complete(model, request), timeout_s)
    except TimeoutError:
        return generation_error_response(GenerationError("timeout", f"no answer within {timeout_s:.0f} s"))
    if result.error is not None:
        return generation_error_response(result.error)
    result.extra["cost"] = response_cost(prices, llm, model, result)
    return JSONResponse(completion_body(request.request_id, body.model, result))


def response_cost(prices: PriceBook, llm: str | None, model: str, result: GenerationResult) -> dict[str, Any]:
    """What this answer cost and what the LLM tier would have charged for the same tokens."""
    tokens = result.prompt_tokens + result.completion_tokens
    counterfactual = prices.cost(llm, tokens) if llm else None
    return asdict(CostSummary.of([prices.cost(model, tokens)], [counterfactual], llm))


def model_cards(spec: FleetSpec) -> list[dict[str, Any]]:
    """Models and specialists, each with what kind of thing it is."""
    cards = [
        _card(name, {"kind": "model", "tier": model.tier, "source": model.source})
        for name, model in spec.models.items()
    ]
    cards += [
        _card(name, {"kind": "specialist", "model": s.model, "description": s.description})
        for name, s in spec.specialists.items()
    ]
    cards += [
        _card(f"{PIPELINE_PREFIX}{name}", {"kind": "pipeline", "description": p.description})
        for name, p in spec.pipelines.items()
    ]
    return cards


def _card(name: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "slm-fleet", "slmfleet": details}


async def _stream_response(
    items: AsyncIterator[StreamDelta | GenerationResult], request_id: str, served_as: str, include_usage: bool
) -> Response:
    """SSE in OpenAI's chunk format. An error before the first token is answered as a plain HTTP error."""
    first = await anext(items, None)
    if isinstance(first, GenerationResult) and first.error is not None:
        return generation_error_response(first.error)

    async def events() -> AsyncIterator[str]:
        yield _sse(chunk_body(request_id, served_as, {"role": "assistant", "content": ""}))
        item = first
        while item is not None:
            if isinstance(item, StreamDelta):
                yield _sse(chunk_body(request_id, served_as, {"content": item.text}))
            elif item.error is not None:
                yield _sse({"error": {"message": item.error.message, "type": "server_error", "code": item.error.kind}})
            else:
                yield _sse(chunk_body(request_id, served_as, {}, item.finish_reason or "stop"))
                if include_usage:
                    yield _sse({**chunk_body(request_id, served_as, {}), "choices": [], "usage": usage(item)})
            item = await anext(items, None)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _trace_request(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """One trace per request: the root span every pipeline, step and model span hangs under."""
    name = f"{request.method} {request.url.path}"
    with TRACER.start_as_current_span(name, kind=trace.SpanKind.SERVER) as span:
        response = await call_next(request)
        span.set_attribute("http.status_code", response.status_code)
        return response


def _require_key(
    keys: frozenset[str],
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token or not any(hmac.compare_digest(token, key) for key in keys):
            return error_response(401, "Missing or invalid API key in 'Authorization: Bearer <key>'", "invalid_api_key")
        return await call_next(request)

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(400, "The request body is not valid JSON", "invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        where = f" at '{param}'" if param else ""
        return error_response(400, f"Invalid request{where}: {first.get('msg')}", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), code=None)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}", "internal")
