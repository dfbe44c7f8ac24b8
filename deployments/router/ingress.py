"""The router deployment: Serve ingress for :func:`deployments.router.api.build_api` over real deployment handles.

:class:`ServeBackend` turns Serve's failure modes into :class:`GenerationError` data: a full queue is
``overloaded`` (503 + Retry-After), a replica that dies mid-request is retried once on another replica (Serve
routes around the dead one) before it is reported as ``engine_dead``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from cluster.admission import DEFAULT_QUEUE_OBJECTIVE_S, model_objective_s, queue_budget, tighter
from cluster.cost import PriceBook, llm_reference_model
from cluster.render.common import STATE_PATH_ENV, model_deployment_name
from cluster.spec import AdapterSpec, EndpointSpec, FleetSpec, SpecialistSpec, UsageLogSpec, parse_spec
from deployments.fleet_state import FleetState
from deployments.model.adapters import adapter_key
from deployments.observability.metrics import FleetMetrics
from deployments.observability.telemetry import configure_tracing, current_context_carrier
from deployments.pipeline.idempotency import IdempotentRuns
from deployments.pipeline.routes import CURRENT_PIPELINE
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import GenerationError, GenerationRequest, GenerationResult, StreamDelta, failure
from deployments.router.adapter_registry import REFRESH_S, REGISTRY_NAMESPACE, with_registered
from deployments.router.adapter_routes import PROBE_TIMEOUT_S, AdapterAdmin
from deployments.router.api import build_api
from deployments.router.auth_gate import CALLER_PRIORITY, AuthGate, gate_for
from deployments.router.endpoint_backend import EndpointCaller
from deployments.router.escalation_budget import EscalationBudget, budget_from_spec
from deployments.router.fleet_health import (
    ServeDetailsCache,
    external_health,
    fleet_health,
    model_health,
    model_replicas,
)
from deployments.router.periodic_read import PeriodicRead
from deployments.router.promotion_routes import PromotionAdmin
from deployments.router.promotions import PROMOTIONS_NAMESPACE, PromotionRouting, TaskMatcher, promotions_from
from deployments.router.refusal_memo import RefusalMemo
from deployments.router.spec_adapter_probes import SpecAdapterProbes
from deployments.router.start_times import StartTimes
from deployments.router.usage_log import UsageLog, UsageRecorder, stream_name

log = logging.getLogger(__name__)
REPLICA_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)
RETRY_DELAY_S = 0.5
WAKE_TIMEOUT_S = 600.0
SHARED_STATE_TIMEOUT_S = 5.0  # a call to the shared store that takes longer fails (budget: let through; keys: 503)


class ServeBackend:
    """Model calls over Serve handles, one handle per model deployment, counted in the fleet's metrics.

    A request leaves with its specialist's settings attached (the model apps do not hold the spec) and with the
    caller's trace context.
    """

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        specialists: dict[str, SpecialistSpec] | None = None,
        metrics: FleetMetrics | None = None,
        scale_to_zero: frozenset[str] = frozenset(),
        objectives: dict[str, float] | None = None,
        *,
        endpoints: dict[str, EndpointSpec] | None = None,
        endpoint_caller: EndpointCaller | None = None,
    ) -> None:
        """``scale_to_zero``: the models whose ``min_replicas`` is 0 (only they are looked up for a cold start);
        ``objectives``: each model's queue-wait objective, which a recent refusal is judged against; ``endpoints``:
        the models served by an outside API, called through ``endpoint_caller`` instead of a handle."""
        self.handles = handles
        self.endpoints = endpoints or {}
        self.endpoint_caller = endpoint_caller or EndpointCaller()
        self.specialists = specialists or {}
        self.metrics = metrics  # its price book also takes in each replica's measured throughput
        self.serve_details = ServeDetailsCache(self._serve_instance_details)
        self._controller: Any = None  # Serve's controller actor, looked up once (a GCS call) on first use
        self.scale_to_zero = scale_to_zero
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self.objectives = objectives or {}
        self.refusals = RefusalMemo()
        self.start_times = StartTimes()  # how long this model's replicas took to start: a refusal's Retry-After
        self.usage: UsageRecorder | None = None  # records opted-in LLM-tier calls (see usage_log)
        # why a specialist may not be served (a spec adapter that failed its probe), None when it may
        self.adapter_check: Callable[[str | None, str], Awaitable[str | None]] | None = None  # (specialist, model)

    def _refused_here(self, model: str, request: GenerationRequest) -> GenerationResult | None:
        """The model's recent refusal applied to this request without a call (see :mod:`refusal_memo`)."""
        objective = self.objectives.get(model, DEFAULT_QUEUE_OBJECTIVE_S)
        return self.refusals.check(model, queue_budget(objective, request.priority, request.queue_budget_s))

    def _outgoing(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its specialist's settings, the caller's trace, and the specialist's queue budget
        (a pipeline's remaining deadline, when smaller, stays)."""
        specialist = self.specialists.get(request.specialist) if request.specialist else None
        budget = tighter(request.queue_budget_s, specialist.latency_objective_s if specialist is not None else None)
        return replace(
            request,
            specialist_spec=specialist,
            trace_context=current_context_carrier(),
            queue_budget_s=budget,
            priority=CALLER_PRIORITY.get(),
        )

    async def _not_served(self, model: str, request: GenerationRequest) -> GenerationResult | None:
        """A refusal without a model call: the specialist's spec adapter failed its probe, or the model's recent
        overload refusal applies (see :mod:`refusal_memo`)."""
        if self.adapter_check is not None and (reason := await self.adapter_check(request.specialist, model)):
            message = f"specialist '{request.specialist}' is not served: {reason}; fix its adapter or remove it"
            return failure(model, "adapter_refused", message)
        return self._refused_here(model, request)

    async def complete(self, model: str, request: GenerationRequest) -> GenerationResult:
        request = self._outgoing(request)
        refused = await self._not_served(model, request)
        if refused is not None:
            return refused
        result = await self._with_retry(model, lambda: self._call(model, request))
        self.refusals.observe(model, result)
        self._count(model, request, result)
        return result

    async def stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        request = self._outgoing(request)
        refused = await self._not_served(model, request)
        if refused is not None:
            yield refused
            return
        items = self._endpoint_stream(model, request) if model in self.endpoints else self._stream(model, request)
        async with aclosing(items):  # a consumer that leaves closes the model's stream at once, not at collection
            async for item in items:
                if isinstance(item, GenerationResult):
                    self.refusals.observe(model, item)
                    self._count(model, request, item)
                yield item

    def _call(self, model: str, request: GenerationRequest) -> Awaitable[GenerationResult]:
        if model in self.endpoints:
            return self.endpoint_caller.complete(model, self.endpoints[model], request)
        return self._handle(model, request).generate.remote(request)

    def _handle(self, model: str, request: GenerationRequest) -> DeploymentHandle:
        """The model's handle; for an adapter specialist, routed by adapter (the model's request router sends it
        to a replica that holds the adapter unless those are hot: ``deployments/model/adapter_router.py``)."""
        spec = request.specialist_spec
        if spec is None or spec.adapter is None:
            return self.handles[model]
        return self.handles[model].options(multiplexed_model_id=adapter_key(spec.adapter))

    def _count(self, model: str, request: GenerationRequest, result: GenerationResult) -> None:
        if self.usage is not None:
            self.usage(model, request, result, CURRENT_PIPELINE.get())
        if self.metrics is None or result.error is not None:
            return
        self.metrics.prices.observe_throughput(model, result.extra.get("tokens_per_hour"))
        self.metrics.record_call(model, request, result, CURRENT_PIPELINE.get())

    async def _stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        """The model's stream under :func:`retry_once` (the plain path's policy): a lost replica or a dead engine is
        tried once more on any live replica (or the one Serve starts in its place). Before anything left that is a
        plain retry; after text left it resumes the answer (:func:`resumed`), so the client sees one stream."""
        sent: list[str] = []
        for attempt in range(2):
            response = self._handle(model, request).options(stream=True).stream.remote(request)
            try:
                async for item in response:
                    if isinstance(item, GenerationResult) and retry_stream(attempt, item, request, sent):
                        break  # a dead engine's answer: once more, on any live replica
                    if isinstance(item, StreamDelta) and item.text:
                        sent.append(item.text)
                    yield _whole(item, request) if isinstance(item, GenerationResult) else item
                else:
                    return
            except (GeneratorExit, asyncio.CancelledError):  # the consumer stopped (client gone, deadline):
                response.cancel()  # the replica's generator is cancelled and vLLM aborts the request
                raise
            except BackPressureError as exc:
                yield self._refused_at_handle(model, exc)
                return
            except (*REPLICA_LOST, DeploymentUnavailableError) as exc:
                lost = _replica_lost(model, exc)
                if not retry_stream(attempt, lost, request, sent):
                    yield lost
                    return
            if sent:
                request = resumed(request, "".join(sent))
                log.warning(
                    "model %s failed mid-stream; resuming after %d characters", model, len(request.continue_from)
                )
            else:
                log.warning("model %s failed before its stream's first item; retrying once", model)
            await asyncio.sleep(RETRY_DELAY_S)

    async def _endpoint_stream(
        self, model: str, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """An outside API's stream under :func:`retry_once`, before its first text only (another API call would
        not continue the cut answer)."""
        for attempt in range(2):
            sent = retry = False
            # closed at once when the consumer leaves, so the API call ends and its place is freed
            async with aclosing(self.endpoint_caller.stream(model, self.endpoints[model], request)) as items:
                async for item in items:
                    if isinstance(item, GenerationResult) and not sent and retry_once(attempt, item):
                        retry = True
                        break
                    sent = sent or isinstance(item, StreamDelta)
                    yield item
            if not retry:
                return
            log.warning("model %s: its endpoint failed before the stream's first item; retrying once", model)
            await asyncio.sleep(RETRY_DELAY_S)

    async def health(self) -> dict[str, dict[str, Any]]:
        """Each model's state from Serve's controller (:mod:`deployments.router.fleet_health`): no model is
        called, so a probe never wakes one that scaled to zero. A model behind an endpoint is ``external``."""
        details, age = await self.serve_details.get()
        for model in self.handles:
            self.start_times.observe(model, model_replicas(details, model), time.time() - age)
        external = {model: external_health(endpoint) for model, endpoint in self.endpoints.items()}
        return {**fleet_health(details, list(self.handles)), **external}

    async def unready(self, model: str) -> GenerationError | None:
        """Why ``model`` has no running replica, or None when it has one (or the controller did not say): at zero
        replicas (or waking from it) a wake-up call is sent (a request at a handle is demand, so Serve starts a
        replica); down (its replica died, or is being replaced) Serve is already replacing it. Either way a caller
        that may escalate does so at once instead of waiting out the start. An outside API is taken as ready."""
        if model in self.endpoints:
            return None
        try:
            details, age = await self.serve_details.get()
            report = model_health(details, model)
            self.start_times.observe(model, model_replicas(details, model), time.time() - age)
        except Exception as exc:  # the controller did not answer: the call goes ahead and waits if it must
            log.warning("readiness check for model %s failed: %r", model, exc)
            return None
        if report["state"] == "down" and not report.get("running"):  # a failed update may leave old ones serving
            return GenerationError("engine_dead", f"model '{model}' has no running replica: {report['detail']}")
        if model not in self.scale_to_zero or report["state"] not in ("scaled_to_zero", "waking"):
            return None
        if model not in self._wakes or self._wakes[model].done():
            self._wakes[model] = asyncio.create_task(self._wake(model))
        return GenerationError("cold_start", f"model '{model}' is scaled to zero and waking")

    async def probe_adapter(self, model: str, adapter: AdapterSpec) -> dict[str, Any]:
        """One replica of ``model`` loads ``adapter`` and measures its effect (``{"error"}`` when it cannot)."""
        try:
            return await asyncio.wait_for(self.handles[model].probe_adapter.remote(adapter), PROBE_TIMEOUT_S)
        except Exception as exc:  # no replica answered: Ray's text goes to the log
            log.warning("probing an adapter on model %s failed: %r", model, exc)
            return {"error": f"model '{model}' did not answer the probe ({type(exc).__name__})", "retry": True}

    async def _serve_instance_details(self) -> dict[str, Any]:
        """Serve's own view of every app, deployment and replica, from its controller actor."""
        if self._controller is None:
            from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

            if not ray.is_initialized():  # outside a Ray worker: get_actor would start a local Ray of its own
                raise RuntimeError("not running in Ray: Serve's controller cannot be asked")

            self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return await self._controller.get_serve_instance_details.remote()

    async def _wake(self, model: str) -> None:
        try:
            await asyncio.wait_for(self.handles[model].wake.remote(), WAKE_TIMEOUT_S)
            log.info("model %s woke from zero", model)
        except Exception as exc:
            log.warning("waking model %s failed: %r", model, exc)

    def _refused_at_handle(self, model: str, exc: Exception) -> GenerationResult:
        """The handle's queue for ``model`` is full. With no running replica (one is being started) the refusal
        says when it is expected, as its Retry-After (:mod:`start_times`); else it is plain back-pressure."""
        log.warning("model %s refused a request at its handle: %r", model, exc)
        retry_after = self._start_expected_in(model)
        if retry_after is None:
            return failure(model, "overloaded", f"model '{model}' is at capacity; retry later")
        message = f"model '{model}' has no running replica and its queue is full; one is expected in {retry_after} s"
        return failure(model, "overloaded", message, retry_after, expected_wait_s=float(retry_after))

    def _start_expected_in(self, model: str) -> int | None:
        """When ``model`` has no running replica: whole seconds until its start is expected to end (None when
        one runs, or when no recent details of Serve's are at hand: a refusal never waits for the controller)."""
        latest = self.serve_details.latest()
        if latest is None:
            return None
        details, age = latest
        replicas, now = model_replicas(details, model), time.time()
        self.start_times.observe(model, replicas, now - age)
        if any(replica.get("state") == "RUNNING" for replica in replicas):
            return None
        return self.start_times.retry_after_s(model, replicas, now)

    async def _with_retry(self, model: str, call: Callable[[], Awaitable[GenerationResult]]) -> GenerationResult:
        for attempt in range(2):
            try:
                result = await call()
            except BackPressureError as exc:
                return self._refused_at_handle(model, exc)
            except (*REPLICA_LOST, DeploymentUnavailableError) as exc:
                result = _replica_lost(model, exc)
            if not retry_once(attempt, result):
                return result
            log.warning("model %s: %s; retrying once on any live replica", model, result.error)
            await asyncio.sleep(RETRY_DELAY_S)
        raise AssertionError("unreachable")


def retry_once(attempt: int, result: GenerationResult) -> bool:
    """The one retry policy of plain and streamed calls: a lost replica or a dead engine is tried once more (Serve
    routes around the dead replica, or waits for the one it starts in its place)."""
    return attempt == 0 and result.error is not None and result.error.kind == "engine_dead"


def retry_stream(attempt: int, result: GenerationResult, request: GenerationRequest, sent: list[str]) -> bool:
    """:func:`retry_once` for a stream: after text has left, only an answer that can be resumed where it was cut."""
    return retry_once(attempt, result) and (not sent or resumable(request))


def resumable(request: GenerationRequest) -> bool:
    """Free text can be continued from any point; constrained output or tool calls cannot (the grammar would start
    over mid-answer). The chat endpoint judges those whole before they stream, so they are never cut."""
    spec = request.specialist_spec
    return request.contract is None and request.tools is None and (spec is None or spec.output is None)


def resumed(request: GenerationRequest, sent: str) -> GenerationRequest:
    """The request that continues a stream cut after ``sent``: the engine picks the answer up where it stopped,
    and it is admitted first among its peers (``high``), since its client already holds half of it."""
    return replace(request, continue_from=sent, priority="high")


def _whole(result: GenerationResult, request: GenerationRequest) -> GenerationResult:
    """A stream's final result as one answer: a resumed stream's text includes what was sent before the cut."""
    if not request.continue_from:
        return result
    extra = {**result.extra, "resumed_after_chars": len(request.continue_from)}
    return replace(result, text=request.continue_from + result.text, extra=extra)


def _replica_lost(model: str, exc: Exception) -> GenerationResult:
    """Ray's exception text (addresses, tracebacks) goes to the log, not to the client."""
    log.warning("model %s lost its replica: %r", model, exc)
    return failure(model, "engine_dead", f"model '{model}' has no live replica ({type(exc).__name__})")


def model_handles(spec: FleetSpec) -> dict[str, DeploymentHandle]:
    """A handle per spec model, to the deployment in that model's own app.

    Not checked for existence: the apps of one config deploy in any order, and calls wait for replicas (or fail
    fast with ``DeploymentUnavailableError`` once a model's app is deleted, which the backend escalates).
    """
    return {
        name: serve.get_deployment_handle(model_deployment_name(name), model_deployment_name(name), _check_exists=False)
        for name in spec.engine_models()
    }


class SwappableApp:
    """An ASGI app that forwards to the router's current FastAPI app, replaced whole by each reconfigure.

    Requests already in flight finish on the app they started with; new ones see the new spec at once.
    """

    def __init__(self, before: Callable[[], Awaitable[None]] | None = None) -> None:
        """``before`` runs ahead of every HTTP request (the router refreshes its copy of the adapter registry)."""
        self.current: FastAPI | None = None
        self.before = before

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop: the apps hold no resources of their own
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.before is not None and scope["type"] == "http":
            await self.before()
        if self.current is None:
            raise RuntimeError("the router has no spec yet (its user_config was never applied)")
        await self.current(scope, receive, send)


@dataclass
class RouterState:
    """Everything the routes use, built from one spec: swapped whole, never edited in place."""

    spec: FleetSpec  # what the router serves: its user_config's spec plus the registered adapter specialists
    base_spec: FleetSpec  # the user_config's spec alone
    set_aside: dict[str, str]  # registered adapter specialists that no longer fit the spec, with the reason
    prices: PriceBook
    backend: ServeBackend
    runner: PipelineRunner
    gate: AuthGate
    budget: EscalationBudget
    promotions: PromotionRouting
    promotions_set_aside: dict[str, str]


def router_state(
    config: dict[str, Any],
    metrics: FleetMetrics,
    shared: FleetState | None = None,
    *,
    registered: dict[str, Any] | None = None,
    usage_log_for: Callable[[UsageLogSpec | None], UsageLog | None] | None = None,
    promoted: dict[str, Any] | None = None,
    matcher: TaskMatcher | None = None,
    spec_probes: SpecAdapterProbes | None = None,
    endpoint_caller: EndpointCaller | None = None,
    side_tasks: set[asyncio.Task[None]] | None = None,
) -> RouterState:
    """The router's state from its ``user_config`` (``{spec, replica_per_hour}``) and the adapter registry's
    entries; a bad spec raises SpecError. ``shared`` is the fleet's shared store, where the LLM tier's budget is
    counted. ``usage_log_for(settings)`` gives the replica's usage-log writer for the spec's settings; ``promoted`` are
    the promotions' entries, matched with the replica's ``matcher``; ``spec_probes`` keeps the replica's verdicts on
    the spec's adapters; ``endpoint_caller`` is the replica's client of outside APIs and ``side_tasks`` its promotions'
    side comparisons in flight (both kept across rebuilds)."""
    base_spec = parse_spec(config.get("spec"), "<router user_config: spec>")
    spec, set_aside = with_registered(base_spec, registered or {})
    for name, reason in set_aside.items():
        log.warning("registered adapter specialist %s set aside: %s", name, reason)
    hourly = {name: float(price) for name, price in (config.get("replica_per_hour") or {}).items()}
    prices = PriceBook.from_spec(spec, replica_per_hour=hourly)
    metrics.prices, metrics.llm_model = prices, llm_reference_model(spec)
    at_zero = frozenset(name for name, model in spec.models.items() if model.autoscaling.min_replicas == 0)
    objectives = {name: model_objective_s(m.latency_objective_s) for name, m in spec.models.items()}
    backend = ServeBackend(
        model_handles(spec),
        dict(spec.specialists),
        metrics,
        at_zero,
        objectives,
        endpoints=spec.endpoint_models(),
        endpoint_caller=endpoint_caller,
    )
    if spec_probes is not None:
        backend.adapter_check = functools.partial(spec_probes.refusal, base_spec, backend.probe_adapter)
    usage_log = usage_log_for(spec.usage_log) if usage_log_for is not None else None
    if usage_log is not None:
        backend.usage = UsageRecorder(spec, prices, usage_log)
    budget = budget_from_spec(spec, shared.consume if shared is not None else None)
    runner = PipelineRunner(
        spec,
        backend.complete,
        ToolRegistry.from_spec(spec),
        prices=prices,
        on_finished=metrics.record_run,
        stream_model=backend.stream,
        budget=budget,
        unready=backend.unready,
    )
    # refuses (raises) a router exposed without keys, however it was launched
    gate = gate_for(
        spec,
        os.environ,
        consume=shared.consume if shared is not None else None,
        leases=(shared.acquire, shared.release) if shared is not None else None,
    )
    promotions, promotions_set_aside = promotions_from(spec, promoted or {})
    for name, reason in promotions_set_aside.items():
        log.warning("promotion %s set aside: %s", name, reason)
    matcher = matcher or TaskMatcher()
    routing = PromotionRouting(promotions, matcher, shared, spec, backend.complete, side_tasks=side_tasks)
    return RouterState(spec, base_spec, set_aside, prices, backend, runner, gate, budget, routing, promotions_set_aside)


@serve.ingress()
class Router:
    """HTTP ingress. Its spec arrives as Serve's ``user_config`` and every change of it goes through
    :meth:`reconfigure`: specialists, pipelines, prices and policies change with no replica restart."""

    def __init__(self) -> None:
        configure_tracing("slmfleet-router")
        # the registry and promotions, re-read at most once a REFRESH_S on the request path (see periodic_read)
        self.refresh_registry = PeriodicRead(self._read_registry, REFRESH_S)
        self.swappable = SwappableApp(self.refresh_registry)  # not `app`: the ingress wrapper owns that name
        self.metrics = FleetMetrics(PriceBook({}), None)  # one set of counters for the replica's life
        # the fleet's one shared store (created by the first replica): what every router replica must agree on
        self.shared_state = FleetState.connect(os.environ.get(STATE_PATH_ENV), timeout_s=SHARED_STATE_TIMEOUT_S)
        self.state: RouterState | None = None
        self.config: dict[str, Any] = {}
        self.registered: dict[str, Any] = {}
        self.usage_log: UsageLog | None = None  # this replica's writer, kept while the spec's settings stay
        self.promoted: dict[str, Any] = {}
        self.matcher = TaskMatcher()  # the replica's embedding model, loaded when the first promotion appears
        self.spec_probes = SpecAdapterProbes()  # this replica's verdicts on the spec's adapters
        self.endpoint_caller = EndpointCaller()  # one pooled HTTP client to outside APIs for the replica's life
        self.side_samples: set[asyncio.Task[None]] = set()  # promotions' side comparisons in flight, bounded

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Called by Serve at start and whenever the deployment's user_config changes."""
        self._rebuild(config, self.registered, self.promoted)

    def _rebuild(self, config: dict[str, Any], registered: dict[str, Any], promoted: dict[str, Any]) -> None:
        """A new state and app from a spec and the registry's and promotions' entries; requests in flight keep the
        old ones."""
        state = router_state(
            config,
            self.metrics,
            self.shared_state,
            registered=registered,
            usage_log_for=self._usage_log_for,
            promoted=promoted,
            matcher=self.matcher,
            spec_probes=self.spec_probes,
            endpoint_caller=self.endpoint_caller,
            side_tasks=self.side_samples,
        )
        self.swappable.current = build_api(
            state.spec,
            state.backend,
            state.gate,
            state.runner,
            state.prices,
            on_escalation=self.metrics.record_chat_escalation,
            budget=state.budget,
            idempotent=IdempotentRuns(self.shared_state, state.spec.server.idempotency_ttl_s),
            adapter_admin=self._adapter_admin(state),
            promotions=state.promotions,
            promotion_admin=self._promotion_admin(state),
        )
        self.state, self.config, self.registered, self.promoted = state, config, registered, promoted
        log.info("router reconfigured: %d models, %d specialists, %d pipelines", *_sizes(state.spec))

    def _usage_log_for(self, settings: UsageLogSpec | None) -> UsageLog | None:
        """The writer for these settings: the current one while they stay the same, else a new stream (the old
        one writes what it holds and closes its segment)."""
        current = self.usage_log
        if current is not None and current.settings == settings:
            return current
        if current is not None:
            current.close()
        self.usage_log = None if settings is None else UsageLog(settings, stream_name(), self.metrics.record_usage_log)
        return self.usage_log

    def __del__(self) -> None:
        """Serve's graceful shutdown: the open segment is closed (and uploaded) rather than left to a reader's
        tail check."""
        if getattr(self, "usage_log", None) is not None:
            self.usage_log.close()

    async def _read_registry(self) -> None:
        """Read the adapter registry and the promotions; a change rebuilds the app. An unreachable store keeps the
        current copy."""
        try:
            entries = await self.shared_state.items(REGISTRY_NAMESPACE)
            promoted = await self.shared_state.items(PROMOTIONS_NAMESPACE)
        except Exception as exc:
            log.warning("adapter registry or promotions unreachable, serving the last copy: %r", exc)
            return
        if (entries != self.registered or promoted != self.promoted) and self.config:
            self._rebuild(self.config, entries, promoted)

    def _adapter_admin(self, state: RouterState) -> AdapterAdmin:
        shared = self.shared_state

        return AdapterAdmin(
            base_spec=lambda: state.base_spec,
            served_spec=lambda: state.spec,
            set_aside=lambda: state.set_aside,
            entries=lambda: shared.items(REGISTRY_NAMESPACE),
            put=functools.partial(shared.put, REGISTRY_NAMESPACE),
            delete=lambda name: shared.delete(REGISTRY_NAMESPACE, name),
            probe=state.backend.probe_adapter,
            refresh=lambda: self.refresh_registry(force=True),
            spec_probe=self.spec_probes.kept,
        )

    def _promotion_admin(self, state: RouterState) -> PromotionAdmin:
        shared = self.shared_state

        return PromotionAdmin(
            served_spec=lambda: state.spec,
            set_aside=lambda: state.promotions_set_aside,
            entries=lambda: shared.items(PROMOTIONS_NAMESPACE),
            put=functools.partial(shared.put, PROMOTIONS_NAMESPACE),
            delete=lambda name: shared.delete(PROMOTIONS_NAMESPACE, name),
            refresh=lambda: self.refresh_registry(force=True),
        )

    def __serve_build_asgi_app__(self) -> SwappableApp:
        return self.swappable


def _sizes(spec: FleetSpec) -> tuple[int, int, int]:
    return len(spec.models), len(spec.specialists), len(spec.pipelines)
