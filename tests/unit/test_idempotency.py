"""Idempotency-Key on pipeline runs: a repeat returns the first run's result and never re-runs its tools; a
different body under the same key, a run still in progress and an unreachable store are each a clear error."""

import asyncio
import copy

import pytest
from fastapi.testclient import TestClient

from cluster.spec import parse_spec
from deployments.pipeline.idempotency import IdempotentRuns
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.router.api import build_api
from tests.unit.in_process_store import InProcessStore
from tests.unit.test_chat_escalation import FLEET, ScriptedBackend

ORDER_SCHEMA = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}


def refund_spec():
    data = copy.deepcopy(FLEET)
    data["pipelines"]["refund"] = {
        "steps": {"issue": {"tool": "order-status", "args": {"order_id": "{{ input.order_id }}"}}}
    }
    return parse_spec(data)


def client(store, issued):
    spec = refund_spec()
    tools = ToolRegistry.from_spec(spec)

    def issue_refund(order_id: str) -> dict:  # a tool with a side effect: it must not run twice for one key
        issued.append(order_id)
        return {"refund": order_id, "number": len(issued)}

    tools.add_python("order-status", issue_refund, ORDER_SCHEMA)
    backend = ScriptedBackend(smol="unused")
    runner = PipelineRunner(spec, backend.complete, tools)
    app = build_api(spec, backend, runner=runner, idempotent=IdempotentRuns(store))
    return TestClient(app, raise_server_exceptions=False)


def run(c, key, order="A1", **body):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return c.post("/v1/pipelines/refund/runs", json={"inputs": {"order_id": order}, **body}, headers=headers)


def test_a_repeated_key_returns_the_first_result_without_running_the_tool_again():
    issued = []
    c = client(InProcessStore(), issued)
    first, again = run(c, "k-1"), run(c, "k-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.json()["run_id"] == first.json()["run_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert issued == ["A1"]
    assert run(c, "k-2").status_code == 200 and issued == ["A1", "A1"]  # a new key is a new run
    assert run(c, None).status_code == 200 and len(issued) == 3  # no key: no promise


def test_the_same_key_with_a_different_body_is_refused_not_rerun():
    issued = []
    c = client(InProcessStore(), issued)
    run(c, "k-1", order="A1")
    resp = run(c, "k-1", order="B2")
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "idempotency_key_reused"
    assert issued == ["A1"]


def test_an_unreachable_store_refuses_the_run_rather_than_risk_running_it_twice():
    issued, store = [], InProcessStore()
    store.fail = True
    resp = run(client(store, issued), "k-1")
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    assert issued == []


@pytest.mark.parametrize(
    ("key", "body", "code"),
    [("", {}, "invalid_idempotency_key"), ("k", {"stream": True}, "idempotency_key_with_stream")],
)
def test_bad_uses_of_the_key_are_400(key, body, code):
    resp = run(client(InProcessStore(), []), key, **body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == code


def test_a_repeat_while_the_first_run_is_in_progress_gets_409_and_a_failed_run_frees_its_key():
    runs, store = IdempotentRuns(InProcessStore()), asyncio.Event()

    async def scenario():
        started, release = asyncio.Event(), store

        async def slow():
            started.set()
            await release.wait()
            return {"status": "ok"}

        first = asyncio.create_task(runs.run("p", "k", {"x": 1}, slow))
        await started.wait()
        busy = await runs.run("p", "k", {"x": 1}, slow)
        release.set()
        done = await first

        async def broken():
            raise RuntimeError("runner bug")

        with pytest.raises(RuntimeError):
            await runs.run("p", "k2", {}, broken)
        retried = await runs.run("p", "k2", {}, slow)
        return busy, done, retried

    busy, done, retried = asyncio.run(scenario())
    assert busy.status == 409 and busy.body["error"]["code"] == "run_in_progress"
    assert done.status == 200 and not done.replayed
    assert retried.status == 200 and not retried.replayed  # the failed run released k2: this one ran
