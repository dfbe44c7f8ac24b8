"""Spec adapters probed on their specialist's first call at a router replica (no Ray: a recording handle and a
scripted probe): a do-nothing or engine-refused adapter is a 503 ``adapter_refused`` with the reason, never the base
model's answer under the specialist's name; a passing one is served; a probe that could not run is tried again."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi.testclient import TestClient

from cluster.escalation import CallOutcome, decide
from cluster.pipeline_spec import EscalationPolicy
from cluster.spec import AdapterSpec
from deployments.protocol import GenerationRequest
from deployments.router.api import build_api
from deployments.router.auth_gate import AuthGate
from deployments.router.ingress import ServeBackend
from deployments.router.openai_api import STATUS_BY_KIND
from deployments.router.spec_adapter_probes import SpecAdapterProbes
from tests.unit.test_adapter_registry import BASE, FakeAdmin
from tests.unit.test_api import FakeBackend
from tests.unit.test_serve_backend import RecordingHandle


class ScriptedProbe:
    """Answers each probe with the next scripted result, after a pause (so concurrent calls overlap)."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers, self.calls = list(answers), []

    async def __call__(self, model: str, adapter: AdapterSpec) -> dict[str, Any]:
        self.calls.append((model, adapter.source))
        await asyncio.sleep(0.01)
        return self.answers.pop(0)


class AdapterHandle(RecordingHandle):
    """A recording handle that takes Serve's per-call options (an adapter call sets its multiplexed id)."""

    def options(self, **_: Any) -> AdapterHandle:
        return self


def backend_with(probes: SpecAdapterProbes, probe: ScriptedProbe) -> tuple[ServeBackend, RecordingHandle]:
    handle = AdapterHandle()
    backend = ServeBackend({"smol": handle}, dict(BASE.specialists))
    backend.adapter_check = functools.partial(probes.refusal, BASE, probe)
    return backend, handle


def calls(backend: ServeBackend, specialist: str | None, n: int) -> list[Any]:
    async def together() -> list[Any]:
        requests = [GenerationRequest(f"r{i}", [], specialist=specialist) for i in range(n)]
        return await asyncio.gather(*(backend.complete("smol", r) for r in requests))

    return asyncio.run(together())


def test_a_do_nothing_spec_adapter_is_refused_with_the_reason_and_probed_once() -> None:
    probes, probe = SpecAdapterProbes(), ScriptedProbe({"divergence": 0.0, "positions": 12})
    backend, handle = backend_with(probes, probe)
    results = calls(backend, "intent", 3)
    assert probe.calls == [("smol", "/adapters/intent")], "three calls at once share one probe"
    assert handle.seen == [], "the base model never answers under the specialist's name"
    for result in results:
        assert result.error.kind == "adapter_refused" and STATUS_BY_KIND["adapter_refused"] == 503
        assert "specialist 'intent' is not served" in result.error.message
        assert "does not change the model's output" in result.error.message
    assert calls(backend, "intent", 1)[0].error.kind == "adapter_refused" and len(probe.calls) == 1  # kept
    assert calls(backend, None, 1)[0].error is None and len(handle.seen) == 1  # the model itself still serves


def test_an_adapter_the_engine_refuses_gives_the_engines_words() -> None:
    probes, probe = SpecAdapterProbes(), ScriptedProbe({"error": "LoRA rank 32 is greater than max_lora_rank 16."})
    backend, handle = backend_with(probes, probe)
    (result,) = calls(backend, "intent", 1)
    assert "rank 32 is greater" in result.error.message and handle.seen == []


def test_a_passing_adapter_is_served_and_its_verdict_kept_across_backends() -> None:
    probes, probe = SpecAdapterProbes(), ScriptedProbe({"divergence": 0.4, "positions": 12})
    backend, handle = backend_with(probes, probe)
    assert all(r.error is None for r in calls(backend, "intent", 2)) and len(handle.seen) == 2
    again, _ = backend_with(probes, probe)  # a reconfigure builds a new backend; the replica's verdicts stay
    assert calls(again, "intent", 1)[0].error is None and len(probe.calls) == 1
    assert probes.kept(BASE, "intent") == ({"divergence": 0.4, "positions": 12}, None)


def test_a_probe_that_could_not_run_lets_the_call_through_and_is_tried_again() -> None:
    unanswered = {"error": "model 'smol' did not answer the probe (TimeoutError)", "retry": True}
    probes, probe = SpecAdapterProbes(), ScriptedProbe(unanswered, {"divergence": 0.0, "positions": 12})
    backend, handle = backend_with(probes, probe)
    assert calls(backend, "intent", 1)[0].error is None and len(handle.seen) == 1
    assert probes.kept(BASE, "intent") == (None, None)
    assert calls(backend, "intent", 1)[0].error.kind == "adapter_refused" and len(probe.calls) == 2


def test_a_new_version_of_the_adapter_is_probed_again() -> None:
    probes = SpecAdapterProbes()
    probe = ScriptedProbe({"divergence": 0.0, "positions": 12}, {"divergence": 0.3, "positions": 12})
    backend, _ = backend_with(probes, probe)
    assert calls(backend, "intent", 1)[0].error.kind == "adapter_refused"
    data = BASE.model_dump()
    data["specialists"]["intent"]["adapter"]["version"] = "2"
    fixed = BASE.model_validate(data)
    backend.adapter_check = functools.partial(probes.refusal, fixed, probe)
    assert asyncio.run(backend.adapter_check("intent", "smol")) is None and len(probe.calls) == 2


def test_runtime_registrations_and_plain_specialists_are_not_probed_here() -> None:
    probes, probe = SpecAdapterProbes(), ScriptedProbe()
    assert asyncio.run(probes.refusal(BASE, probe, "registered-at-runtime", "smol")) is None
    assert asyncio.run(probes.refusal(BASE, probe, None, "smol")) is None
    assert probe.calls == []


def test_a_refused_adapter_escalates_where_the_policy_allows_as_an_unavailable_model_does() -> None:
    from deployments.protocol import failure

    verdict = decide(
        CallOutcome(failure("smol", "adapter_refused", "no")),
        None,
        EscalationPolicy(to="big"),
        max_tokens=16,
        retries_done=0,
        can_escalate=True,
    )
    assert (verdict.action, verdict.reason) == ("escalate", "unavailable")


def test_the_call_escalated_from_a_refused_adapter_is_served_on_the_llm_tier() -> None:
    """The escalated call keeps its specialist's name, but the adapter is not applied on the LLM tier: it is not
    refused there, and no probe runs for it."""
    probes, probe = SpecAdapterProbes(), ScriptedProbe({"divergence": 0.0, "positions": 12})
    handles = {"smol": AdapterHandle(), "big": AdapterHandle()}
    backend = ServeBackend(handles, dict(BASE.specialists))
    backend.adapter_check = functools.partial(probes.refusal, BASE, probe)

    async def escalated() -> tuple[Any, Any]:
        refused = await backend.complete("smol", GenerationRequest("r1", [], specialist="intent"))
        answered = await backend.complete("big", GenerationRequest("r1:big", [], specialist="intent"))
        return refused, answered

    refused, answered = asyncio.run(escalated())
    assert refused.error.kind == "adapter_refused"
    assert answered.error is None and len(handles["big"].seen) == 1 and len(probe.calls) == 1


def test_the_admin_listing_shows_a_spec_adapters_probe_and_why_it_is_inactive() -> None:
    probes = SpecAdapterProbes()
    fake = FakeAdmin({"divergence": 1.0, "positions": 1})
    admin = fake.admin()
    admin.spec_probe = probes.kept
    http = TestClient(build_api(BASE, FakeBackend(), AuthGate(), adapter_admin=admin))
    (before,) = http.get("/admin/adapters").json()["data"]
    assert (before["origin"], before["active"], before["probe"]) == ("spec", True, None)
    asyncio.run(probes.refusal(BASE, ScriptedProbe({"divergence": 0.0, "positions": 12}), "intent", "smol"))
    (after,) = http.get("/admin/adapters").json()["data"]
    assert after["active"] is False and "does not change the model's output" in after["reason"]
    assert after["probe"]["divergence"] == 0.0
