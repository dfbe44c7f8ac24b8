"""The router's HTTP surface as a plain FastAPI app over a :class:`ModelBackend`.

Built by a function, not at import time, so unit tests drive it with a fake backend and the Serve ingress
builds it per replica with real deployment handles. Every error leaves in OpenAI's shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.cost import PriceBook, llm_reference_model
from cluster.spec import FleetSpec, ModelSpec, SpecialistSpec
from deployments.pipeline.idempotency import IdempotentRuns
from deployments.pipeline.routes import PIPELINE_PREFIX, add_pipeline_routes
from deployments.pipeline.runner import PipelineRunner
from deployments.router.adapter_routes import AdapterAdmin, add_adapter_routes
from deployments.router.auth_gate import (
    CALLER_PRIORITY,
    CONCURRENCY_RETRY_AFTER_S,
    PRIORITIES,
    PRIORITY_HEADER,
    AuthGate,
    Leave,
    nothing_to_leave,
    required_scope,
)
from deployments.router.chat_endpoint import ChatEndpoint, ModelBackend
from deployments.router.escalation_budget import EscalationBudget
from deployments.router.fleet_health import is_serving
from deployments.router.openai_api import (
    ChatCompletionRequest,
    error_body,
    error_response,
    retry_after_headers,
    validation_error_body,
)
from deployments.router.promotion_routes import PromotionAdmin, add_promotion_routes
from deployments.router.promotions import PromotionRouting
from deployments.router.responses_api import add_responses_routes
from deployments.router.stream_guard import HEARTBEAT_S, SSE_HEARTBEAT, with_heartbeat

OPEN_GATE = AuthGate()  # no keys: only ever on loopback (the gate refuses to start otherwise)
log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache"}

TRACER = trace.get_tracer("slmfleet.router")


def build_api(
    spec: FleetSpec,
    backend: ModelBackend,
    gate: AuthGate = OPEN_GATE,
    runner: PipelineRunner | None = None,
    prices: PriceBook | None = None,
    *,
    on_escalation: Callable[[str, str], None] | None = None,
    budget: EscalationBudget | None = None,
    idempotent: IdempotentRuns | None = None,
    adapter_admin: AdapterAdmin | None = None,
    promotions: PromotionRouting | None = None,
    promotion_admin: PromotionAdmin | None = None,
) -> FastAPI:
    """The OpenAI-compatible app: chat completions, pipelines, model list, health; API keys enforced when given.

    ``prices`` is the router's live book (declared prices, or derived ones that follow measured throughput);
    ``on_escalation(name, reason)`` sees each chat call's escalation (the router's metrics count them);
    ``budget`` caps capacity escalations to the LLM tier; ``idempotent`` keeps keyed pipeline runs to one each;
    ``adapter_admin`` backs the adapter registry's admin routes; ``promotions`` routes the calls of promoted tasks
    and ``promotion_admin`` backs their admin routes.
    """
    prices = prices or PriceBook.from_spec(spec)
    llm = llm_reference_model(spec)  # the counterfactual's model, fixed for the app's life
    app = FastAPI(title="slm-fleet router", docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    app.middleware("http")(_gatekeeper(gate))
    app.middleware("http")(_trace_request)
    if runner is not None:
        add_pipeline_routes(app, runner, idempotent)
    if adapter_admin is not None:
        add_adapter_routes(app, adapter_admin)
    if promotion_admin is not None:
        add_promotion_routes(app, promotion_admin)

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            models = await backend.health()
        except Exception as exc:  # the controller is unreachable: say so, as a 503, not a 500
            log.warning("health: Serve's controller did not answer: %r", exc)
            return JSONResponse({"status": "degraded", "error": "Serve's controller did not answer"}, 503)
        serving = is_serving(models)
        return JSONResponse({"status": "ok" if serving else "degraded", "models": models}, 200 if serving else 503)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": model_cards(spec)}

    chat = ChatEndpoint(
        spec, backend, prices, llm, runner, on_escalation=on_escalation, budget=budget, promotions=promotions
    )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        if not body.stream:
            return answer_response(*await chat.complete(body))
        answer = await chat.chunks(body)
        if isinstance(answer, tuple):
            return answer_response(*answer)
        return StreamingResponse(sse_chunks(answer), media_type="text/event-stream", headers=SSE_HEADERS)

    add_responses_routes(app, _as_dict_call(chat.complete, chat.parse), _as_dict_call(chat.chunks, chat.parse))
    return app


def answer_response(status: int, body: dict[str, Any]) -> JSONResponse:
    """A JSON answer; 429/503 carry Retry-After so well-behaved clients back off."""
    return JSONResponse(body, status_code=status, headers=retry_after_headers(status, body))


async def sse_chunks(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Chat chunks as SSE; the stream always ends with ``[DONE]`` (after an error event when one came). A silence
    of :data:`HEARTBEAT_S` sends an SSE comment line, which clients skip (a resumed stream waits for a new replica)."""
    async for text in with_heartbeat(_sse_lines(chunks), HEARTBEAT_S, SSE_HEARTBEAT):
        yield text
    yield "data: [DONE]\n\n"


async def _sse_lines(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _as_dict_call(
    call: Callable[[ChatCompletionRequest], Awaitable[Any]], parse: Callable[[dict[str, Any]], Any]
) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """The chat endpoint over plain dicts (what the Responses API hands it)."""

    async def run(data: dict[str, Any]) -> Any:
        body = parse(data)
        return body if isinstance(body, tuple) else await call(body)

    return run


def model_cards(spec: FleetSpec) -> list[dict[str, Any]]:
    """Models and specialists, each with what kind of thing it is."""
    cards = [_card(name, _model_details(model)) for name, model in spec.models.items()]
    cards += [_card(name, _specialist_details(s)) for name, s in spec.specialists.items()]
    cards += [
        _card(f"{PIPELINE_PREFIX}{name}", {"kind": "pipeline", "description": p.description})
        for name, p in spec.pipelines.items()
    ]
    return cards


def _model_details(model: ModelSpec) -> dict[str, Any]:
    """Where a model comes from: its weights' source, or the outside API's host and model name."""
    if model.endpoint is None:
        return {"kind": "model", "tier": model.tier, "source": model.source}
    endpoint = {"host": urlsplit(model.endpoint.url).netloc, "model": model.endpoint.model}
    return {"kind": "model", "tier": model.tier, "endpoint": endpoint}


def _specialist_details(specialist: SpecialistSpec) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": "specialist", "model": specialist.model, "description": specialist.description}
    if specialist.adapter is not None:
        details["adapter"] = {"source": specialist.adapter.source, "version": specialist.adapter.version}
    return details


def _card(name: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "slm-fleet", "slmfleet": details}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _trace_request(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """One trace per request: the root span every pipeline, step and model span hangs under."""
    name = f"{request.method} {request.url.path}"
    with TRACER.start_as_current_span(name, kind=trace.SpanKind.SERVER) as span:
        response = await call_next(request)
        span.set_attribute("http.status_code", response.status_code)
        return response


def _gatekeeper(
    gate: AuthGate,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Every route but the open ones needs a key with the route's scope, within its rate and its requests in
    flight; the request's priority class (its key's, or lower by header) rides with it into every model call
    (:data:`CALLER_PRIORITY`)."""

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        scope = required_scope(request.url.path)
        if scope is None:
            return await call_next(request)
        refused, identity = _authenticate(gate, request, scope)
        if refused is not None:
            return refused
        priority = gate.priority(identity, request.headers.get(PRIORITY_HEADER))
        if priority is None:
            return error_response(400, f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}", "invalid_priority")
        refused, leave = await _admit(gate, identity)
        if refused is not None:
            return refused
        token = CALLER_PRIORITY.set(priority)
        try:
            response = await call_next(request)
        except BaseException:
            await leave()
            raise
        finally:
            CALLER_PRIORITY.reset(token)
        return _leave_when_sent(response, leave)

    return check


async def _admit(gate: AuthGate, identity: str | None) -> tuple[Response | None, Leave]:
    """(a 429, or None; the call that gives the slot back). A slot for requests in flight is taken first, then one
    request of the rate is spent, so a refusal spends neither: one refused for its rate gives its slot back."""
    leave = await gate.enter(identity)
    if leave is None:
        return _too_many_in_flight(gate, identity or ""), nothing_to_leave
    try:
        wait = await gate.over_quota(identity) if identity is not None else None
    except BaseException:  # cancelled (the client left) while the store answered: the slot is not kept
        await leave()
        raise
    if wait is None:
        return None, leave
    await leave()
    message = f"key {identity} is over its requests_per_min; retry in {wait} s"
    body = error_body(message, "rate_limit_error", "rate_limit_exceeded", retry_after_s=wait)
    return JSONResponse(body, status_code=429, headers=retry_after_headers(429, body)), nothing_to_leave


def _too_many_in_flight(gate: AuthGate, identity: str) -> Response:
    limit = gate.policies[identity].max_concurrent_requests
    message = f"key {identity} has {limit} requests in flight, its max_concurrent_requests; retry when one ends"
    retry_after_s = CONCURRENCY_RETRY_AFTER_S
    body = error_body(message, "rate_limit_error", "concurrency_limit_exceeded", retry_after_s=retry_after_s)
    return JSONResponse(body, status_code=429, headers=retry_after_headers(429, body))


def _leave_when_sent(response: Response, leave: Callable[[], Awaitable[None]]) -> Response:
    """The response with its slot given back once its body is sent, or the client has gone: a stream holds its
    slot until it ends. The middleware's response always has a ``body_iterator``; one without gives it back now."""
    body = getattr(response, "body_iterator", None)
    if body is None:
        return response  # unreachable behind BaseHTTPMiddleware; the lease's TTL would free it anyway

    async def sent() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            await leave()

    response.body_iterator = sent()  # type: ignore[attr-defined]
    return response


def _authenticate(gate: AuthGate, request: Request, scope: str) -> tuple[Response | None, str | None]:
    """(a refusal, or None; the key's identity): 401 without a valid key, 403 without the route's scope."""
    if gate.open:
        return None, None
    key = gate.authenticate(request.headers.get("authorization", ""))
    if key is None:
        return error_response(
            401, "Missing or invalid API key in 'Authorization: Bearer <key>'", "invalid_api_key"
        ), None
    if scope not in key.scopes:
        return error_response(403, f"this key ({key.identity}) lacks the '{scope}' scope", "insufficient_scope"), None
    request.state.key_identity = key.identity
    return None, key.identity


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> Response:
        return JSONResponse(validation_error_body(exc.errors()), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), code=None)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}", "internal")
