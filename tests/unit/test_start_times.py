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
    for read_at in (101.0, 104.0, 118.0):
        times.observe("m", [replica("a", "STARTING", 100.0)], read_at)
    times.observe("m", [replica("a", "RUNNING", 100.0)], 121.0)  # the first read that finds it running
    assert times.last_start_s["m"] == 21.0
    # its replacement has been starting for 5 s: about 16 s to go
    assert times.retry_after_s("m", [replica("b", "STARTING", 200.0)], now=205.0) == 16


def test_a_start_read_far_apart_teaches_nothing():
    """Reads are sparse when nothing asks: a replica seen starting, then running an hour later, did not take an
    hour; nor is a replica's age while it updates (a live edit keeps its start time) a start."""
    times = StartTimes()
    times.observe("m", [replica("a", "STARTING", 100.0)], 101.0)
    times.observe("m", [replica("a", "RUNNING", 100.0)], 3700.0)
    times.observe("m", [replica("a", "UPDATING", 100.0)], 3701.0)
    times.observe("m", [replica("a", "RUNNING", 100.0)], 3702.0)
    assert "m" not in times.last_start_s


def test_a_replica_first_seen_running_teaches_nothing():
    """A router that starts after its models sees them RUNNING with old start times: no start was seen."""
    times = StartTimes()
    times.observe("m", [replica("a", "RUNNING", 0.0)], 5000.0)
    assert "m" not in times.last_start_s
    assert times.retry_after_s("m", [], now=5000.0) == DEFAULT_START_S


def test_the_hint_counts_starts_only_and_stays_between_a_second_and_two_minutes():
    times = StartTimes(last_start_s={"m": 20.0})
    starting = [replica("b", "STARTING", 100.0), replica("c", "STARTING", 110.0), replica("old", "STOPPING", 0.0)]
    assert times.retry_after_s("m", starting, now=112.0) == 8  # b has run 12 of its 20 s; a stopping one is no start
    assert times.retry_after_s("m", starting, now=150.0) == 1  # slower than the last start: come back soon
    slow = StartTimes(last_start_s={"m": 900.0})
    assert slow.retry_after_s("m", [], now=0.0) == 120  # the openai client gives up on a longer Retry-After


def test_models_are_kept_apart_and_replicas_gone_are_forgotten():
    times = StartTimes()
    times.observe("m", [replica("a", "STARTING", 10.0)], 11.0)
    times.observe("n", [replica("x", "STARTING", 10.0)], 38.0)
    times.observe("m", [], 12.0)  # a's start failed and it is gone
    assert times.starting == {"m": {}, "n": {"x": (10.0, 38.0)}}
    times.observe("n", [replica("x", "RUNNING", 10.0)], 40.0)
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

    async def read_then_refused():
        await backend.serve_details.get()  # details at hand, as on a router serving calls
        return await refused(backend)

    backend.serve_details = router.ServeDetailsCache(fetch)
    result = asyncio.run(read_then_refused())
    assert result.error.kind == "overloaded" and result.error.retry_after_s == 15
    assert "no running replica" in result.error.message and "expected in 15 s" in result.error.message

    backend.serve_details = router.ServeDetailsCache(fetch)
    state["details"] = details_with(replica("b", "RUNNING", 1000.0))
    busy = asyncio.run(read_then_refused())  # a replica runs: plain back-pressure, no estimate
    assert busy.error.kind == "overloaded" and busy.error.retry_after_s is None


def test_a_full_queue_never_waits_for_serves_controller():
    """No details at hand (or only stale ones): the refusal goes out at once, without an estimate."""
    backend = ServeBackend({})
    asked = []

    async def fetch():
        asked.append(1)
        await asyncio.sleep(3600)  # a controller busy replacing the replica

    async def refused_at_once():
        result = await asyncio.wait_for(refused(backend), 1)
        await asyncio.sleep(0)  # the background refresh it started has begun
        return result

    backend.serve_details = router.ServeDetailsCache(fetch)
    result = asyncio.run(refused_at_once())
    assert result.error.kind == "overloaded" and result.error.retry_after_s is None
    assert asked == [1], "a refresh was started for the next one"
