"""The one auth gate: key formats with identities and scopes, the exposure rule every launch path applies, and
the route scopes the router enforces."""

import asyncio
import copy

import httpx
import pytest
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from cluster.cost import PriceBook
from cluster.spec import parse_spec
from deployments.observability.metrics import FleetMetrics
from deployments.router import api as api_module
from deployments.router import ingress
from deployments.router.api import build_api
from deployments.router.auth_gate import (
    AuthGate,
    ExposureError,
    KeyFormatError,
    exposure_issues,
    gate_for,
    parse_keys,
    required_scope,
)
from tests.unit.in_process_store import InProcessStore
from tests.unit.test_chat_escalation import FLEET, HELLO, ScriptedBackend


def spec(host="127.0.0.1", keys_env=None):
    data = copy.deepcopy(FLEET)
    data["server"] = {"host": host, **({"api_keys_env": keys_env} if keys_env else {})}
    return parse_spec(data)


def test_key_entries_carry_identities_and_scopes():
    keys = parse_keys("sk-plain, alice=sk-a, ops:admin+serving=sk-o, auditor:logs=sk-l")
    by_identity = {k.identity: k for k in keys}
    plain = next(k for k in keys if k.secret == "sk-plain")
    assert plain.identity.startswith("key-") and "sk-plain" not in plain.identity
    assert plain.scopes == by_identity["alice"].scopes == {"serving"}
    assert by_identity["ops"].scopes == {"admin", "serving"}
    assert by_identity["auditor"].scopes == {"logs"}


@pytest.mark.parametrize(
    ("raw", "says"),
    [("ops:root=sk-1", "unknown scopes ['root']"), ("a=sk-1,a=sk-2", "share an identity"), ("a b=c", "entry 1")],
)
def test_bad_key_entries_are_named_by_position_never_by_secret(raw, says):
    with pytest.raises(KeyFormatError, match=says.replace("[", r"\[").replace("]", r"\]")) as err:
        parse_keys(raw)
    assert "sk-" not in str(err.value)


def test_exposed_without_keys_or_with_an_empty_key_variable_may_not_start():
    (issue,) = exposure_issues(spec(host="0.0.0.0"), "0.0.0.0", {})
    assert issue.path == "server.host" and "without API keys" in issue.problem
    (issue,) = exposure_issues(spec(host="0.0.0.0", keys_env="FLEET_KEYS"), "0.0.0.0", {"FLEET_KEYS": " "})
    assert issue.path == "server.api_keys_env" and "unset or empty" in issue.problem
    (issue,) = exposure_issues(spec(keys_env="FLEET_KEYS"), "127.0.0.1", {"FLEET_KEYS": "a:nope=k"})
    assert "unknown scopes" in issue.problem
    assert exposure_issues(spec(), "127.0.0.1", {}) == []  # loopback may be open
    assert exposure_issues(spec(host="0.0.0.0", keys_env="FLEET_KEYS"), "0.0.0.0", {"FLEET_KEYS": "k"}) == []


def test_a_router_replica_refuses_to_start_exposed_without_keys_however_it_was_launched(monkeypatch):
    """``serve run`` of a rendered config and KubeRay both start the router from its user_config: the same rule."""
    monkeypatch.setattr(ingress, "model_handles", lambda _spec: {})
    exposed = {"spec": spec(host="0.0.0.0").model_dump(mode="json", exclude_unset=True)}
    with pytest.raises(ExposureError, match="binding beyond loopback without API keys"):
        ingress.router_state(exposed, FleetMetrics(PriceBook({}), None))
    monkeypatch.setenv("FLEET_KEYS", "ops:admin+serving=sk-1")
    keyed = {"spec": spec(host="0.0.0.0", keys_env="FLEET_KEYS").model_dump(mode="json", exclude_unset=True)}
    state = ingress.router_state(keyed, FleetMetrics(PriceBook({}), None))
    assert [k.identity for k in state.gate.keys] == ["ops"]


def test_routes_need_their_scope_and_health_stays_open():
    assert required_scope("/healthz") is None
    assert required_scope("/v1/chat/completions") == required_scope("/v1/models") == "serving"
    assert required_scope("/admin/adapters") == "admin" and required_scope("/v1/logs/segments") == "logs"
    gate = gate_for(spec(keys_env="K"), {"K": "app=sk-app,auditor:logs=sk-logs"})
    backend = ScriptedBackend(smol="hello")
    c = TestClient(build_api(spec(), backend, gate), raise_server_exceptions=False)
    body = {"model": "smol", "messages": HELLO}

    def chat(key):
        return c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

    assert chat("sk-app").status_code == 200
    wrong_scope = chat("sk-logs")
    assert wrong_scope.status_code == 403 and wrong_scope.json()["error"]["code"] == "insufficient_scope"
    assert "auditor" in wrong_scope.json()["error"]["message"] and "sk-logs" not in wrong_scope.text
    assert chat("sk-nope").status_code == 401
    assert c.get("/healthz").status_code == 200


def test_no_keys_is_an_open_gate():
    assert AuthGate().open and AuthGate().authenticate("Bearer anything") is None


def keyed(per_min=None, priority="normal"):
    data = copy.deepcopy(FLEET)
    data["server"] = {"api_keys_env": "K", "keys": {"app": {"requests_per_min": per_min, "priority": priority}}}
    return parse_spec(data)


def test_a_key_over_its_rate_gets_429_with_retry_after_counted_in_the_shared_store():
    s = keyed(per_min=2)
    gate = gate_for(s, {"K": "app=sk-app,batch=sk-b"}, consume=InProcessStore().consume)
    c = TestClient(build_api(s, ScriptedBackend(smol="hi"), gate), raise_server_exceptions=False)

    def chat(key):
        headers = {"Authorization": f"Bearer {key}"}
        return c.post("/v1/chat/completions", json={"model": "smol", "messages": HELLO}, headers=headers)

    assert [chat("sk-app").status_code for _ in range(2)] == [200, 200]
    over = chat("sk-app")
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["Retry-After"] == "60" and "app" in over.json()["error"]["message"]
    assert chat("sk-b").status_code == 200  # another key has its own (here: no) quota


def test_a_header_may_lower_a_keys_priority_never_raise_it():
    gate = gate_for(keyed(priority="normal"), {"K": "app=sk-app"})
    assert gate.priority("app", None) == "normal"
    assert gate.priority("app", "low") == "low"
    assert gate.priority("app", "high") == "normal"
    assert gate.priority("app", "urgent") is None  # not a class: the router answers 400
    assert AuthGate().priority(None, "high") == "normal"


def test_policies_must_name_a_key_that_exists():
    (issue,) = exposure_issues(keyed(), "127.0.0.1", {"K": "other=sk-1"})
    assert issue.path == "server.keys.app" and "no key in K has this identity" in issue.problem


class HeldBackend(ScriptedBackend):
    """Answers "hi", but each call waits until the test lets it go: requests stay in flight on demand."""

    def __init__(self):
        super().__init__(smol="hi")
        self.release = asyncio.Event()
        self.streaming = asyncio.Event()  # set once a stream's first chunk is out
        self.mid_stream: asyncio.Event | None = None  # when set, a stream waits for it before its end

    async def complete(self, model, request):
        await self.release.wait()
        return await super().complete(model, request)

    async def stream(self, model, request):
        await self.release.wait()
        async for item in super().stream(model, request):
            yield item
            self.streaming.set()
            if self.mid_stream is not None:
                await self.mid_stream.wait()


def in_flight_client(limit, per_min=None):
    data = copy.deepcopy(FLEET)
    data["server"] = {"api_keys_env": "K", "keys": {"app": {"max_concurrent_requests": limit}}}
    data["server"]["keys"]["app"]["requests_per_min"] = per_min
    s = parse_spec(data)
    store, backend = InProcessStore(), HeldBackend()
    leases = (store.acquire, store.release)
    app = build_api(s, backend, gate_for(s, {"K": "app=sk-app,batch=sk-b"}, consume=store.consume, leases=leases))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router")
    return http, backend, store


def chat_as(http, key, stream=False):
    body = {"model": "smol", "messages": HELLO, "stream": stream}
    return http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


async def until_held(store, n):
    while store.held("key_concurrency", "app") < n:
        await asyncio.sleep(0.01)


async def until_free(store):
    while store.held("key_concurrency", "app"):
        await asyncio.sleep(0.01)


def test_a_key_at_its_requests_in_flight_gets_429_until_one_ends():
    async def scenario():
        http, backend, store = in_flight_client(limit=2)
        async with http:
            first, second = (asyncio.create_task(chat_as(http, "sk-app")) for _ in range(2))
            await asyncio.wait_for(until_held(store, 2), 5)
            refused = await chat_as(http, "sk-app")
            other_key = asyncio.create_task(chat_as(http, "sk-b"))  # no limit of its own
            backend.release.set()
            done = [await t for t in (first, second, other_key)]
            after = await chat_as(http, "sk-app")
            return refused, done, after, store.held("key_concurrency", "app")

    refused, done, after, held_at_end = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "concurrency_limit_exceeded" and "app has 2 requests in flight" in error["message"]
    assert [r.status_code for r in done] == [200, 200, 200] and after.status_code == 200
    assert held_at_end == 0, "every slot is given back once its answer is sent"


def test_a_refusal_for_one_limit_spends_nothing_of_the_other():
    """Refused for requests in flight: no request of the rate is spent. Refused for the rate: the slot is back."""

    async def scenario():
        http, backend, store = in_flight_client(limit=1, per_min=2)
        async with http:
            held = asyncio.create_task(chat_as(http, "sk-app"))
            await asyncio.wait_for(until_held(store, 1), 5)
            busy = [await chat_as(http, "sk-app") for _ in range(3)]
            backend.release.set()
            await held
            second = await chat_as(http, "sk-app")
            over_rate = await chat_as(http, "sk-app")
            return busy, second, over_rate, store.held("key_concurrency", "app")

    busy, second, over_rate, held_at_end = asyncio.run(scenario())
    assert [r.json()["error"]["code"] for r in busy] == ["concurrency_limit_exceeded"] * 3
    assert second.status_code == 200, "the three refused requests spent none of the two a minute"
    assert over_rate.status_code == 429 and over_rate.json()["error"]["code"] == "rate_limit_exceeded"
    assert held_at_end == 0, "a request refused for its rate gives its slot back"


def test_a_stream_holds_its_slot_until_its_last_chunk():
    async def scenario():
        http, backend, store = in_flight_client(limit=1)
        backend.release.set()
        backend.mid_stream = asyncio.Event()
        async with http:
            streaming = asyncio.create_task(chat_as(http, "sk-app", stream=True))
            await asyncio.wait_for(backend.streaming.wait(), 5)  # headers and first chunk sent, body still open
            while_streaming = await chat_as(http, "sk-app")
            backend.mid_stream.set()
            streamed = await streaming
            await asyncio.wait_for(until_free(store), 5)
            return while_streaming, streamed, await chat_as(http, "sk-app")

    while_streaming, streamed, next_one = asyncio.run(scenario())
    assert while_streaming.status_code == 429
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert next_one.status_code == 200


def test_a_client_that_leaves_mid_body_gives_its_slot_back():
    left = []

    async def leave():
        left.append(True)

    async def body():
        yield b"one"
        yield b"two"

    async def scenario():
        response = api_module._leave_when_sent(StreamingResponse(body()), leave)
        chunks = response.body_iterator
        assert await chunks.__anext__() == b"one"
        await chunks.aclose()  # what Starlette does when the client disconnects

    asyncio.run(scenario())
    assert left == [True]


def test_a_store_that_does_not_answer_lets_requests_through():
    store = InProcessStore()
    store.fail = True
    data = copy.deepcopy(FLEET)
    data["server"] = {"api_keys_env": "K", "keys": {"app": {"max_concurrent_requests": 1}}}
    s = parse_spec(data)
    gate = gate_for(s, {"K": "app=sk-app"}, leases=(store.acquire, store.release))
    c = TestClient(build_api(s, ScriptedBackend(smol="hi"), gate))
    body, headers = {"model": "smol", "messages": HELLO}, {"Authorization": "Bearer sk-app"}
    assert [c.post("/v1/chat/completions", json=body, headers=headers).status_code for _ in range(3)] == [200] * 3
