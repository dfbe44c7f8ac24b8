"""What ``/healthz`` says about each model, read from Serve's controller: never a call to the model itself.

A probe that called every model through its handle would wake a model that scaled to zero (a request at zero is
demand) and fan unauthenticated load out to every replica. Serve's controller already knows each deployment's
replicas and their states, so the router asks it, at most once per :data:`DETAILS_TTL_S`, whatever the probe rate.

States: ``ready`` (a replica is RUNNING), ``scaled_to_zero`` (no replica, none wanted: idle by design),
``waking`` (a scale-to-zero model starting its first replica again), ``down`` (a model that should have replicas
has none running, its app is missing, or Serve failed to deploy it); ``external`` (served by an outside API,
which is not probed). Only ``down`` makes ``/healthz`` a 503: a
router whose models are idle or waking is healthy. :func:`model_health` is pure, tested on plain dicts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from cluster.render.common import model_deployment_name
from cluster.spec import EndpointSpec

ModelState = Literal["ready", "scaled_to_zero", "waking", "down", "external"]
DETAILS_TTL_S = 1.0
DETAILS_TIMEOUT_S = 5.0
STALE_LIMIT_S = 30.0
FAILED_STATUSES = frozenset({"DEPLOY_FAILED"})


def _deployment(details: Mapping[str, Any], model: str) -> Mapping[str, Any] | None:
    app = model_deployment_name(model)
    return (details.get("applications", {}).get(app) or {}).get("deployments", {}).get(app)


def model_replicas(details: Mapping[str, Any], model: str) -> list[Mapping[str, Any]]:
    """The model deployment's replicas in Serve's details (state, id, start time), none when it has no app."""
    return list((_deployment(details, model) or {}).get("replicas", []))


def model_health(details: Mapping[str, Any], model: str) -> dict[str, Any]:
    """One model's state from Serve's instance details (``ServeInstanceDetails`` as a dict)."""
    app = model_deployment_name(model)
    deployment = _deployment(details, model)
    if deployment is None:
        return {"state": "down", "running": 0, "target": 0, "detail": f"Serve has no app '{app}'"}
    running = sum(1 for replica in deployment.get("replicas", []) if replica.get("state") == "RUNNING")
    target = int(deployment.get("target_num_replicas", 0))
    min_replicas = _min_replicas(deployment)
    report: dict[str, Any] = {"state": _state(deployment, running, target, min_replicas)}
    report.update(running=running, target=target)
    if report["state"] == "down":
        report["detail"] = deployment.get("message") or f"{running} of {target} replicas running"
    return report


def _state(deployment: Mapping[str, Any], running: int, target: int, min_replicas: int) -> ModelState:
    if deployment.get("status") in FAILED_STATUSES:
        return "down"
    if running > 0:
        return "ready"
    if target == 0:
        return "scaled_to_zero"
    return "waking" if min_replicas == 0 else "down"


def _min_replicas(deployment: Mapping[str, Any]) -> int:
    """The deployment's autoscaling floor; a fixed-size deployment never means to be at zero."""
    scaling = (deployment.get("deployment_config") or {}).get("autoscaling_config") or {}
    return int(scaling.get("min_replicas", 1))


def external_health(endpoint: EndpointSpec) -> dict[str, Any]:
    """A model served by an outside API: not probed (its calls' failures escalate and are counted in metrics)."""
    return {"state": "external", "endpoint": urlsplit(endpoint.url).netloc}


def fleet_health(details: Mapping[str, Any], models: list[str]) -> dict[str, dict[str, Any]]:
    """Every spec model's state."""
    return {model: model_health(details, model) for model in models}


def is_serving(models: Mapping[str, Mapping[str, Any]]) -> bool:
    """The router is healthy unless a model is down (idle, waking and ready models all serve or will)."""
    return all(report["state"] != "down" for report in models.values())


class ServeDetailsCache:
    """Serve's instance details, fetched off the event loop's way (an awaited actor call) and kept briefly.

    The controller can be slow to answer while it handles a dying replica on a busy machine, and readiness is read
    on the request path (every call that may escalate): so details older than :data:`DETAILS_TTL_S` are returned
    at once while one refresh runs in the background, as long as they are at most :data:`STALE_LIMIT_S` old (the
    replicas are still serving: the controller is only the bookkeeper). Only a cache with no details that recent
    waits for the controller, and gets its error.
    """

    def __init__(
        self, fetch: Callable[[], Awaitable[Mapping[str, Any]]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``fetch`` returns the controller's details; the router passes an awaited controller call."""
        self._fetch = fetch
        self._clock = clock
        self._details: Mapping[str, Any] | None = None
        self._at = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None  # one fetch at a time, however many callers
        self._error: Exception | None = None  # why the last fetch failed

    async def get(self) -> tuple[Mapping[str, Any], float]:
        """(details, their age in seconds), refreshed in the background when older than :data:`DETAILS_TTL_S`."""
        age = self._clock() - self._at
        if age > DETAILS_TTL_S and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh())
        if self._details is None or age > STALE_LIMIT_S:  # nothing recent enough to serve from: wait for it
            await asyncio.shield(self._refreshing or asyncio.sleep(0))
            if self._details is None or self._clock() - self._at > STALE_LIMIT_S:
                raise self._error or TimeoutError("Serve's controller gave no details")
        return self._details, self._clock() - self._at

    def latest(self) -> tuple[Mapping[str, Any], float] | None:
        """(details, their age) at once, as :meth:`get` would serve them, or None where it would wait; a refresh
        starts when they are older than :data:`DETAILS_TTL_S`. For answers that must not wait on the controller."""
        age = self._clock() - self._at
        if age > DETAILS_TTL_S and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh())
        return None if self._details is None or age > STALE_LIMIT_S else (self._details, age)

    async def _refresh(self) -> None:
        try:
            self._details = await asyncio.wait_for(self._fetch(), DETAILS_TIMEOUT_S)
            self._at, self._error = self._clock(), None
        except Exception as exc:  # the last details serve while they are recent enough
            self._error = exc
