"""The adapter registry merged into the router's spec, and its admin routes (against a fake admin, no Ray)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cluster.adapter_probe import (
    DISJOINT_DIVERGENCE,
    mean_divergence,
    position_divergence,
    probe_prefixes,
    probe_refusal,
)
from cluster.spec import AdapterSpec, FleetSpec, parse_spec
from deployments.router.adapter_registry import registry_entry, with_registered
from deployments.router.adapter_routes import AdapterAdmin
from deployments.router.api import build_api
from deployments.router.auth_gate import AuthGate, parse_keys
from tests.unit.test_api import FakeBackend

BASE = parse_spec(
    {
        "models": {
            "smol": {"source": "bundled:smollm2-135m-instruct", "lora": {"probe_min_divergence": 0.01}},
            "plain": {"source": "bundled:smollm2-135m-instruct"},
        },
        "specialists": {"intent": {"model": "smol", "adapter": {"source": "/adapters/intent"}}},
    }
)


def entry(model: str = "smol", source: str = "/adapters/x", **extra: Any) -> dict[str, Any]:
    return {"specialist": {"model": model, "adapter": {"source": source}, **extra}}


def test_registered_specialists_join_the_spec_and_misfits_are_set_aside_with_the_reason() -> None:
    spec, aside = with_registered(
        BASE,
        {
            "tuned": entry(instructions="be brief"),
            "intent": entry(),  # the spec defines it: the spec wins
            "gone": entry(model="removed"),
            "nolora": entry(model="plain"),
            "broken": {"specialist": {"model": "smol", "adapter": {"source": "/a"}, "typo": 1}},
        },
    )
    assert spec.specialists["tuned"].instructions == "be brief"
    assert spec.specialists["tuned"].adapter == AdapterSpec(source="/adapters/x")
    assert spec.specialists["intent"].adapter.source == "/adapters/intent"
    assert set(aside) == {"intent", "gone", "nolora", "broken"}
    assert "spec wins" in aside["intent"] and "'removed' is not in the spec" in aside["gone"]
    assert "no lora" in aside["nolora"] and "not a valid specialist" in aside["broken"]
    assert with_registered(BASE, {}) == (BASE, {})


def test_an_entry_round_trips_and_describes_itself_for_diff() -> None:
    specialist = BASE.specialists["intent"]
    stored = registry_entry(specialist, {"divergence": 0.5})
    assert stored["description"] == "adapter specialist on smol: /adapters/intent@1"
    spec, aside = with_registered(BASE, {"copy": stored})
    assert aside == {} and spec.specialists["copy"] == specialist


def test_probe_divergence_and_refusal() -> None:
    same = {1: -0.1, 2: -2.5}
    assert mean_divergence([same, same], [same, same]) == 0.0  # a do-nothing adapter
    moved = {1: -0.6, 3: -1.0}  # token 1 moved by 0.5, token 2 left the top-k, token 3 entered it
    assert mean_divergence([same, same], [same, moved]) == pytest.approx(0.25)
    assert position_divergence(same, {7: -0.1}) == DISJOINT_DIVERGENCE
    assert probe_prefixes(list(range(9))) == [[0, 1, 2], list(range(6)), list(range(9))]
    assert probe_prefixes([5]) == [[5]]
    with pytest.raises(ValueError, match="differ"):
        mean_divergence([same], [])
    assert probe_refusal(0.02, 0.01) is None
    assert "does not change the model's output" in (probe_refusal(0.0, 0.01) or "")


class FakeAdmin:
    """The registry as a dict; probes answer what the test set."""

    def __init__(self, probe: dict[str, Any]) -> None:
        self.store: dict[str, Any] = {}
        self.probe_answer = probe
        self.probed: list[tuple[str, AdapterSpec]] = []
        self.spec: FleetSpec = BASE
        self.aside: dict[str, str] = {}

    async def refresh(self) -> None:
        self.spec, self.aside = with_registered(BASE, self.store)

    async def put(self, name: str, value: dict[str, Any]) -> None:
        self.store[name] = value

    async def delete(self, name: str) -> bool:
        return self.store.pop(name, None) is not None

    async def entries(self) -> dict[str, Any]:
        return dict(self.store)

    async def probe(self, model: str, adapter: AdapterSpec) -> dict[str, Any]:
        self.probed.append((model, adapter))
        return self.probe_answer

    def admin(self) -> AdapterAdmin:
        return AdapterAdmin(
            base_spec=lambda: BASE,
            served_spec=lambda: self.spec,
            set_aside=lambda: self.aside,
            entries=self.entries,
            put=self.put,
            delete=self.delete,
            probe=self.probe,
            refresh=self.refresh,
        )


def client(admin: FakeAdmin, keys: str = "") -> TestClient:
    gate = AuthGate(parse_keys(keys)) if keys else AuthGate()
    return TestClient(build_api(BASE, FakeBackend(), gate, adapter_admin=admin.admin()), raise_server_exceptions=False)


BODY = {"model": "smol", "adapter": {"source": "/adapters/tuned", "version": "2"}, "description": "tuned"}


def test_register_probes_stores_and_serves_then_update_and_remove() -> None:
    fake = FakeAdmin({"divergence": 0.4, "positions": 12, "load_s": 0.01})
    http = client(fake)
    created = http.put("/admin/adapters/tuned", json=BODY)
    assert created.status_code == 201, created.text
    assert created.json()["probe"]["divergence"] == 0.4 and created.json()["origin"] == "runtime"
    assert fake.probed == [("smol", AdapterSpec(source="/adapters/tuned", version="2"))]
    assert fake.spec.specialists["tuned"].description == "tuned"
    updated = http.put("/admin/adapters/tuned", json={**BODY, "adapter": {"source": "/adapters/tuned", "version": "3"}})
    assert updated.status_code == 200 and fake.spec.specialists["tuned"].adapter.version == "3"
    listing = {item["name"]: item for item in http.get("/admin/adapters").json()["data"]}
    assert listing["intent"]["origin"] == "spec" and listing["tuned"]["version"] == "3"
    assert http.delete("/admin/adapters/tuned").json() == {"name": "tuned", "deleted": True}
    assert "tuned" not in fake.spec.specialists
    assert http.delete("/admin/adapters/tuned").status_code == 404
    assert http.delete("/admin/adapters/intent").json()["error"]["code"] == "defined_in_spec"


@pytest.mark.parametrize(
    ("probe", "words"),
    [
        ({"divergence": 0.0, "positions": 12}, "does not change the model's output"),
        ({"error": "LoRA rank 32 is greater than max_lora_rank 16."}, "rank 32 is greater"),
    ],
)
def test_an_adapter_the_probe_refuses_is_422_and_not_stored(probe: dict[str, Any], words: str) -> None:
    fake = FakeAdmin(probe)
    answer = client(fake).put("/admin/adapters/tuned", json=BODY)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "adapter_refused"
    assert words in answer.json()["error"]["message"]
    assert fake.store == {}


def test_a_probe_that_decided_nothing_is_a_503_to_retry_and_nothing_is_stored() -> None:
    fake = FakeAdmin({"error": "the adapter could not be fetched (ConnectionError: reset)", "retry": True})
    answer = client(fake).put("/admin/adapters/tuned", json=BODY)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json()["error"]["code"] == "probe_failed" and "ConnectionError" in answer.json()["error"]["message"]
    assert fake.store == {}


@pytest.mark.parametrize(
    ("name", "body", "status", "words"),
    [
        ("Bad_Name", BODY, 400, "not a valid name"),
        ("tuned", {**BODY, "adapter": None}, 400, "needs 'adapter'"),
        ("intent", BODY, 409, "the spec defines this name"),
        ("tuned", {**BODY, "model": "plain"}, 400, "has no lora"),
        ("tuned", {**BODY, "model": "nope"}, 400, "'nope' is not in the spec"),
        ("tuned", {**BODY, "typo": 1}, 400, "typo"),
    ],
)
def test_registrations_that_cannot_fit_are_4xx_before_any_probe(name: str, body: dict, status: int, words: str) -> None:
    fake = FakeAdmin({"divergence": 1.0, "positions": 1})
    answer = client(fake).put(f"/admin/adapters/{name}", json=body)
    assert answer.status_code == status, answer.text
    assert words in answer.text and fake.probed == [] and fake.store == {}


def test_admin_routes_need_an_admin_key() -> None:
    fake = FakeAdmin({"divergence": 1.0, "positions": 1})
    http = client(fake, keys="app=serving-key,ops:admin=admin-key")
    assert http.get("/admin/adapters").status_code == 401
    refused = http.put("/admin/adapters/tuned", json=BODY, headers={"Authorization": "Bearer serving-key"})
    assert refused.status_code == 403 and fake.store == {}
    allowed = http.put("/admin/adapters/tuned", json=BODY, headers={"Authorization": "Bearer admin-key"})
    assert allowed.status_code == 201
