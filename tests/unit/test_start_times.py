"""When to come back to a model with no running replica: its last start as the router saw it, less the start
under way (deployments/router/start_times.py), and the refusal that carries it (ServeBackend)."""

import asyncio

from ray.serve.exceptions import BackPressureError

from deployments.router import ingress as router
from deployments.router.ingress import ServeBackend
from deployments.router.start_times import DEFAULT_START_S, StartTimes


def replica(replica_id, state, started):
    return {"replica_id": replica_id, "state": state, "start_time_s": started}


def test_a_start_seen_through_sets_the_next_hint():
    times = StartTimes()
    times.observe("m", [replica("a", "STARTING", 100.0)], now=101.0)
    times.observe("m", [replica("a", "RUNNING", 100.0)], now=121.0)  # first read that finds it running
    assert times.last_start_s["m"] == 21.0
    # its replacement has been starting for 5 s: about 16 s to go
    assert times.retry_after_s("m", [replica("b", "STARTING", 200.0)], now=205.0) == 16


def test_a_replica_first_seen_running_teaches_nothing():
    """A router that starts after its models sees them RUNNING with old start times: no start was seen."""
    times = StartTimes()
    times.observe("m", [replica("a", "RUNNING", 0.0)], now=5000.0)
    assert "m" not in times.last_start_s
    assert times.retry_after_s("m", [], now=5000.0) == DEFAULT_START_S


def test_the_hint_is_at_least_a_second_and_counts_the_start_furthest_along():
    times = StartTimes(last_start_s={"m": 20.0})
    starting = [replica("b", "STARTING", 100.0), replica("c", "PENDING_ALLOCATION", 110.0)]
    assert times.retry_after_s("m", starting, now=112.0) == 8  # b has run 12 of its 20 s
    assert times.retry_after_s("m", starting, now=150.0) == 1  # slower than the last start: come back soon


def test_models_are_kept_apart_and_replicas_gone_are_forgotten():
    times = StartTimes()
    times.observe("m", [replica("a", "STARTING", 10.0)], now=11.0)
    times.observe("n", [replica("x", "STARTING", 10.0)], now=11.0)
    times.observe("m", [], now=12.0)  # a's start failed and it is gone
    assert times.starting == {"m": {}, "n": {"x": 10.0}}
    times.observe("n", [replica("x", "RUNNING", 10.0)], now=40.0)
    assert times.last_start_s == {"n": 30.0}


def details_with(*replicas):
    deployment = {"status": "UPDATING", "replicas": list(replicas), "target_num_replicas": 1}
    return {"applications": {"model-m": {"deployments": {"model-m": deployment}}}}


async def refused(backend):
    async def full_queue():
        raise BackPressureError(32, 32)

    return await backend._with_retry("m", full_queue)


def test_a_full_queue_with_no_running_replica_says_when_one_is_expected(monkeypatch):
    monkeypatch.setattr(router.time, "time", lambda: 1010.0)
    backend = ServeBackend({})
    backend.start_times.last_start_s["m"] = 25.0
    state = {"details": details_with(replica("b", "STARTING", 1000.0))}

    async def fetch():
        return state["details"]

    backend.serve_details = router.ServeDetailsCache(fetch)
    result = asyncio.run(refused(backend))
    assert result.error.kind == "overloaded" and result.error.retry_after_s == 15
    assert "no running replica" in result.error.message and "expected in 15 s" in result.error.message

    backend.serve_details = router.ServeDetailsCache(fetch)
    state["details"] = details_with(replica("b", "RUNNING", 1000.0))
    busy = asyncio.run(refused(backend))  # a replica runs: plain back-pressure, no estimate
    assert busy.error.kind == "overloaded" and busy.error.retry_after_s is None


def test_a_full_queue_without_serves_details_is_refused_as_before():
    backend = ServeBackend({})

    async def fetch():
        raise TimeoutError("controller busy")

    backend.serve_details = router.ServeDetailsCache(fetch)
    result = asyncio.run(refused(backend))
    assert result.error.kind == "overloaded" and result.error.retry_after_s is None
