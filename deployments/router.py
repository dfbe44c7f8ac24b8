"""The router deployment: Serve ingress for :func:`deployments.api.build_api` over real deployment handles.

:class:`ServeBackend` turns Serve's failure modes into :class:`GenerationError` data: a full queue is
``overloaded`` (503 + Retry-After), a replica that dies mid-request is retried once on another replica (Serve
routes around the dead one) before it is reported as ``engine_dead``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from cluster.cost import PriceBook, llm_reference_model
from cluster.spec import FleetSpec
from deployments.api import build_api
from deployments.metrics import FleetMetrics
from deployments.pipeline_routes import CURRENT_PIPELINE
from deployments.pipeline_runner import PipelineRunner
from deployments.protocol import GenerationRequest, GenerationResult, StreamDelta, failure
from deployments.telemetry import configure_tracing, current_context_carrier
from deployments.tools import ToolRegistry

log = logging.getLogger(__name__)
REPLICA_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)
HEALTH_PROBE_TIMEOUT_S = 5.0
RETRY_DELAY_S = 0.5


class ServeBackend:
    """Model calls over Serve handles, one handle per model deployment, counted in the fleet's metrics."""

    def __init__(self, handles: dict[str, DeploymentHandle], metrics: FleetMetrics | None = None) -> None:
        self.handles = handles
        self.metrics = metrics

    async def complete(self, model: str, request: GenerationRequest) -> GenerationResult:
        request = replace(request, trace_context=current_context_carrier())
        result = await self._with_retry(model, lambda: self.handles[model].generate.remote(request))
        self._count(model, request, result)
        return result

    async def stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        request = replace(request, trace_context=current_context_carrier())
        async for item in self._stream(model, request):
            if isinstance(item, GenerationResult):
                self._count(model, request, item)
            yield item

    def _count(self, model: str, request: GenerationRequest, result: GenerationResult) -> None:
        if self.metrics is not None and result.error is None:
            self.metrics.record_call(model, request, result, CURRENT_PIPELINE.get())

    async def _stream(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        sent_any = False
        for attempt in range(2):
            try:
                async for item in self.handles[model].options(stream=True).stream.remote(request):
                    sent_any = True
                    yield item
                return
            except BackPressureError as exc:
                yield failure(model, "overloaded", f"model '{model}' is at capacity: {exc}")
                return
            except (*REPLICA_LOST, DeploymentUnavailableError) as exc:
                if sent_any or attempt == 1:  # part of the answer already left: a retry would repeat it
                    yield failure(model, "engine_dead", f"model '{model}' lost its replica: {exc}")
                    return
                await asyncio.sleep(RETRY_DELAY_S)

    async def health(self) -> dict[str, bool]:
        names = list(self.handles)
        probes = [asyncio.wait_for(self.handles[n].ping.remote(), HEALTH_PROBE_TIMEOUT_S) for n in names]
        results = await asyncio.gather(*probes, return_exceptions=True)
        return {name: not isinstance(result, BaseException) for name, result in zip(names, results, strict=True)}

    async def _with_retry(self, model: str, call: Callable[[], Awaitable[GenerationResult]]) -> GenerationResult:
        for attempt in range(2):
            try:
                result = await call()
            except BackPressureError as exc:
                return failure(model, "overloaded", f"model '{model}' is at capacity: {exc}")
            except (*REPLICA_LOST, DeploymentUnavailableError) as exc:
                if attempt == 1:
                    return failure(model, "engine_dead", f"model '{model}' has no live replica: {exc}")
                log.warning("model %s lost a replica mid-request; retrying once: %s", model, exc)
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            dead_engine = result.error is not None and result.error.kind == "engine_dead"
            if not dead_engine or attempt == 1:
                return result
            log.warning("model %s answered from a dead engine; retrying once on any live replica", model)
            await asyncio.sleep(RETRY_DELAY_S)
        raise AssertionError("unreachable")


def api_keys_from_env(spec: FleetSpec) -> frozenset[str]:
    """Keys from the environment variable the spec names (comma-separated); empty when none is named."""
    if not spec.server.api_keys_env:
        return frozenset()
    raw = os.environ.get(spec.server.api_keys_env, "")
    return frozenset(key.strip() for key in raw.split(",") if key.strip())


@serve.ingress()
class Router:
    """HTTP ingress; the FastAPI app is built per replica from the spec and the model handles."""

    def __init__(self, spec: FleetSpec, **handles: Any) -> None:
        configure_tracing("slmfleet-router")
        self.spec = spec
        prices = PriceBook.from_spec(spec)
        self.metrics = FleetMetrics(prices, llm_reference_model(spec))
        self.backend = ServeBackend(dict(handles), self.metrics)
        self.runner = PipelineRunner(spec, self.backend.complete, ToolRegistry.from_spec(spec), prices=prices)
        self.api_keys = api_keys_from_env(spec)
        if spec.server.api_keys_env and not self.api_keys:
            raise RuntimeError(f"server.api_keys_env names {spec.server.api_keys_env}, which holds no keys")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.spec, self.backend, self.api_keys, self.runner, self.metrics.record_run)
