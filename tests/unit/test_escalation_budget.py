"""The LLM-tier budget: capacity escalations (a small model overloaded or waking) are capped per LLM model and
minute in the shared store; beyond it the call is refused fast, while quality escalations are never counted."""

import asyncio
import copy

import pytest
from fastapi.testclient import TestClient

from cluster.spec import parse_spec
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import GenerationError, GenerationResult
from deployments.router.api import build_api
from deployments.router.escalation_budget import EscalationBudget, budget_from_spec
from tests.unit.in_process_store import Clock, InProcessStore
from tests.unit.test_chat_escalation import FLEET, HELLO, ScriptedBackend, error, ok

UNAVAILABLE = {"to": "big", "reasons": ["unavailable"]}


def fleet(per_min):
    data = copy.deepcopy(FLEET)
    data["models"]["big"]["capacity_escalations_per_min"] = per_min
    data["models"]["smol"]["escalation"] = UNAVAILABLE
    data["pipelines"]["support-triage"]["escalation"] = UNAVAILABLE
    return parse_spec(data)


def overloaded(retry_after_s=None):
    return GenerationResult(model="", error=GenerationError("overloaded", "queue full", retry_after_s))


def test_the_budget_counts_per_target_and_says_when_the_window_frees():
    clock = Clock()
    budget = EscalationBudget({"big": 2}, InProcessStore(clock).consume)

    async def takes():
        first = [await budget.take("big") for _ in range(3)]
        clock.now = 45.0
        later = await budget.take("big")
        clock.now = 61.0
        return first, later, await budget.take("big"), await budget.take("other-model")

    first, later, fresh, unlimited = asyncio.run(takes())
    assert first == [None, None, 60]
    assert later == 15  # the minute's window ends at 60 s
    assert fresh is None and unlimited is None


def test_an_unreachable_store_lets_the_escalation_through(caplog):
    async def broken(*_):
        raise ConnectionError("actor gone")

    assert asyncio.run(EscalationBudget({"big": 1}, broken).take("big")) is None
    assert "escalation let through" in caplog.text


def test_only_llm_tier_models_carry_a_limit():
    budget = budget_from_spec(fleet(7), None)
    assert budget.limits == {"big": 7}


def chat(spec, backend, budget):
    with TestClient(build_api(spec, backend, budget=budget), raise_server_exceptions=False) as client:
        return [client.post("/v1/chat/completions", json={"model": "smol", "messages": HELLO}) for _ in range(3)]


def test_chat_calls_escalate_for_capacity_until_the_budget_is_spent_then_get_a_fast_503():
    spec = fleet(2)
    backend = ScriptedBackend(smol=overloaded(), big="from big")
    first, second, third = chat(spec, backend, budget_from_spec(spec, InProcessStore().consume))
    assert ok(first)["choices"][0]["message"]["content"] == "from big"
    assert ok(second)["slmfleet"]["served_by"] == "big"
    err = error(third, 503, "overloaded", says="budget for capacity escalations to 'big' (2 a minute) is spent")
    assert third.headers["Retry-After"] == "60"
    assert err["code"] == "overloaded"
    assert backend.models() == ["smol", "big", "smol", "big", "smol"]  # the third never reached big


def test_escalations_for_a_dead_engine_are_not_capacity_and_are_never_counted():
    spec = fleet(1)
    dead = GenerationResult(model="", error=GenerationError("engine_dead", "gone"))
    backend = ScriptedBackend(smol=dead, big="from big")
    assert all(r.status_code == 200 for r in chat(spec, backend, budget_from_spec(spec, InProcessStore().consume)))


@pytest.mark.parametrize("per_min", [0])
def test_a_pipeline_step_refused_by_the_budget_fails_as_unavailable(per_min):
    spec = fleet(per_min)
    backend = ScriptedBackend(smol=overloaded(), big="refund")
    budget = budget_from_spec(spec, InProcessStore().consume)
    runner = PipelineRunner(spec, backend.complete, ToolRegistry.from_spec(spec), budget=budget)
    result = asyncio.run(runner.run("support-triage", {"message": "refund please"}))
    classify = result.steps[0]
    assert result.status == "failed" and classify.status == "failed"
    assert classify.error.kind == "unavailable" and "budget" in classify.error.message
    assert "big" not in backend.models()
