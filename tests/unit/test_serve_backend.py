"""ServeBackend's failure policy without a cluster: back-pressure is 503 data, lost replicas and dead engines
are retried once, then reported as engine_dead (so pipelines escalate and chat clients get a 503)."""

import asyncio

from ray.exceptions import ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from deployments import router
from deployments.protocol import GenerationError, GenerationResult
from deployments.router import ServeBackend

OK = GenerationResult(model="m", text="fine", finish_reason="stop")
DEAD = GenerationResult(model="m", error=GenerationError("engine_dead", "gone"))


class ScriptedCalls:
    """Returns or raises the scripted outcomes in order (a fake for a Serve handle call)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.count = 0

    async def __call__(self):
        self.count += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def run(call, monkeypatch):
    monkeypatch.setattr(router, "RETRY_DELAY_S", 0)
    return asyncio.run(ServeBackend({})._with_retry("m", call))


def test_back_pressure_is_overloaded_without_retry(monkeypatch):
    call = ScriptedCalls(BackPressureError(32, 32))
    result = run(call, monkeypatch)
    assert result.error.kind == "overloaded" and call.count == 1


def test_a_lost_replica_is_retried_once(monkeypatch):
    call = ScriptedCalls(ActorUnavailableError("restarting", None), OK)
    assert run(call, monkeypatch) is OK and call.count == 2


def test_a_dead_engine_answer_is_retried_once_then_reported(monkeypatch):
    assert run(ScriptedCalls(DEAD, OK), monkeypatch) is OK
    call = ScriptedCalls(DEAD, DEAD)
    assert run(call, monkeypatch).error.kind == "engine_dead" and call.count == 2


def test_two_lost_replicas_become_engine_dead(monkeypatch):
    lost = ActorUnavailableError("gone", None)
    result = run(ScriptedCalls(lost, lost), monkeypatch)
    assert result.error.kind == "engine_dead" and "no live replica" in result.error.message
