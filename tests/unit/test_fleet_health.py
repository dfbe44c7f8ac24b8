"""/healthz from Serve's controller: each model's state from its deployment details, never a call to a model."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from cluster.spec import parse_spec
from deployments.router.api import build_api
from deployments.router.fleet_health import ServeDetailsCache, fleet_health, is_serving, model_health


def deployment(replicas: list[str], target: int, min_replicas: int = 1, status: str = "HEALTHY", message: str = ""):
    return {
        "status": status,
        "message": message,
        "target_num_replicas": target,
        "deployment_config": {"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": 2}},
        "replicas": [{"state": state, "replica_id": f"r{i}"} for i, state in enumerate(replicas)],
    }


def details(**models) -> dict:
    apps = {f"model-{name}": {"deployments": {f"model-{name}": dep}} for name, dep in models.items()}
    return {"applications": apps}


@pytest.mark.parametrize(
    ("dep", "state"),
    [
        (deployment(["RUNNING", "STARTING"], 2), "ready"),
        (deployment([], 0, min_replicas=0), "scaled_to_zero"),
        (deployment(["STARTING"], 1, min_replicas=0), "waking"),
        (deployment(["STARTING"], 1, min_replicas=1), "down"),  # a model that should serve and does not
        (deployment([], 1, min_replicas=1, status="UNHEALTHY", message="replica failed health check"), "down"),
        (deployment(["RUNNING"], 1, status="DEPLOY_FAILED"), "down"),
    ],
)
def test_model_state_from_its_deployment(dep, state):
    report = model_health(details(smol=dep), "smol")
    assert report["state"] == state
    assert report["running"] == sum(r["state"] == "RUNNING" for r in dep["replicas"])
    assert ("detail" in report) == (state == "down")


def test_a_missing_app_is_down_and_named():
    report = model_health(details(), "smol")
    assert report["state"] == "down" and "model-smol" in report["detail"]


def test_idle_and_waking_models_keep_the_router_healthy():
    models = fleet_health(
        details(a=deployment(["RUNNING"], 1), b=deployment([], 0, min_replicas=0), c=deployment([], 1, 0)),
        ["a", "b", "c"],
    )
    assert [m["state"] for m in models.values()] == ["ready", "scaled_to_zero", "waking"]
    assert is_serving(models)
    assert not is_serving({**models, "d": {"state": "down"}})


def test_details_are_fetched_once_per_ttl_for_any_number_of_probes():
    calls, now = [], [0.0]

    async def fetch():
        calls.append(now[0])
        await asyncio.sleep(0)
        return {"n": len(calls)}

    async def scenario():
        cache = ServeDetailsCache(fetch, clock=lambda: now[0])
        first = await asyncio.gather(*(cache.get() for _ in range(20)))
        assert {d["n"] for d, _ in first} == {1}
        now[0] += 2.0
        assert (await cache.get()) == ({"n": 1}, 2.0)  # served at once; the refresh runs in the background
        await asyncio.sleep(0.01)
        assert (await cache.get()) == ({"n": 2}, 0.0)
        assert len(calls) == 2

    asyncio.run(scenario())


def test_a_slow_controller_gets_recent_details_then_an_error():
    now, fail = [0.0], [False]

    async def fetch():
        if fail[0]:
            raise TimeoutError
        return {"ok": True}

    async def scenario():
        cache = ServeDetailsCache(fetch, clock=lambda: now[0])
        await cache.get()
        fail[0], now[0] = True, 20.0
        assert await cache.get() == ({"ok": True}, 20.0)  # the controller is only the bookkeeper
        now[0] = 31.0
        with pytest.raises(TimeoutError):
            await cache.get()

    asyncio.run(scenario())


def test_a_hung_controller_holds_no_caller_once_there_are_details():
    now, hang = [0.0], [False]

    async def fetch():
        if hang[0]:
            await asyncio.sleep(60)
        return {"ok": True}

    async def scenario() -> float:
        cache = ServeDetailsCache(fetch, clock=lambda: now[0])
        await cache.get()
        hang[0], now[0] = True, 5.0
        started = asyncio.get_running_loop().time()
        for _ in range(10):
            assert (await cache.get())[0] == {"ok": True}
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 0.5


class HealthBackend:
    """A fake backend for the health route only (the router logic under test is the route's status mapping)."""

    def __init__(self, models=None, error=None):
        self.models, self.error = models, error

    async def complete(self, model, request):
        raise AssertionError("a health probe must not call a model")

    async def stream(self, model, request):
        raise AssertionError("a health probe must not call a model")

    async def unready(self, model):
        return None

    async def health(self):
        if self.error:
            raise self.error
        return self.models


SPEC = parse_spec({"models": {"smol": {"source": "bundled:smollm2-135m-instruct"}}}, "<test>")


@pytest.mark.parametrize(
    ("models", "error", "code", "status"),
    [
        ({"smol": {"state": "scaled_to_zero", "running": 0, "target": 0}}, None, 200, "ok"),
        ({"smol": {"state": "down", "running": 0, "target": 1, "detail": "x"}}, None, 503, "degraded"),
        (None, TimeoutError(), 503, "degraded"),
    ],
)
def test_healthz_status_codes(models, error, code, status):
    resp = TestClient(build_api(SPEC, HealthBackend(models, error))).get("/healthz")
    assert (resp.status_code, resp.json()["status"]) == (code, status)
    if models:
        assert resp.json()["models"] == models


def test_a_failed_update_with_old_replicas_still_serving_is_not_unready():
    """``down`` from a failed update while old replicas run: calls go to them, not to the LLM tier; with none
    running, the model is unready and a call that may escalate does so."""
    from deployments.router.ingress import ServeBackend

    async def readiness(dep) -> object:
        backend = ServeBackend({"smol": object()})
        backend.serve_details = ServeDetailsCache(lambda: _async(details(smol=dep)))
        return await backend.unready("smol")

    async def _async(value):
        return value

    assert asyncio.run(readiness(deployment(["RUNNING"], 1, status="DEPLOY_FAILED"))) is None
    failed = asyncio.run(readiness(deployment(["STARTING"], 1, status="DEPLOY_FAILED", message="bad args")))
    assert failed.kind == "engine_dead" and "bad args" in failed.message
