"""Router HTTP surface over a fake backend: request validation, error shapes, auth, streaming format."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cluster.spec import load_spec
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import GenerationError, GenerationResult, StreamDelta
from deployments.router.api import build_api
from deployments.router.auth_gate import AuthGate, parse_keys

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "fleet.yaml")
HELLO = [{"role": "user", "content": "hi"}]


class FakeBackend:
    """Answers with scripted results and records what it was asked; not a real engine."""

    def __init__(self, result: GenerationResult | None = None, pieces: tuple[str, ...] = ("Hel", "lo")) -> None:
        self.result = result or GenerationResult(
            model="smol", text="".join(pieces), finish_reason="stop", prompt_tokens=7, completion_tokens=2
        )
        self.pieces = pieces
        self.calls = []

    async def complete(self, model, request):
        self.calls.append((model, request))
        return self.result

    async def stream(self, model, request):
        self.calls.append((model, request))
        if self.result.error is None:
            for piece in self.pieces:
                yield StreamDelta(piece)
        yield self.result

    async def health(self):
        return {"smol": {"state": "ready"}}

    async def unready(self, model):
        return None


def client(backend=None, keys=""):
    return TestClient(
        build_api(SPEC, backend or FakeBackend(), AuthGate(parse_keys(keys))), raise_server_exceptions=False
    )


def post(c, body, **kw):
    return c.post("/v1/chat/completions", json=body, **kw)


def assert_openai_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def test_specialist_name_routes_to_its_model_with_specialist_attached():
    backend = FakeBackend(pieces=("ref", "und"))  # a valid intent label
    resp = post(client(backend), {"model": "intent", "messages": HELLO})
    assert resp.status_code == 200
    model, request = backend.calls[0]
    assert (model, request.specialist) == ("smol", "intent")
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "intent"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    prices = {name: m.price_per_1k_tokens for name, m in SPEC.models.items()}
    cost = body["slmfleet"]["cost"]
    assert cost["llm_model"] == "big"
    assert cost["total"] == pytest.approx(9 / 1000 * prices["smol"])
    assert cost["llm_counterfactual"] == pytest.approx(9 / 1000 * prices["big"])
    assert cost["ratio"] == pytest.approx(prices["smol"] / prices["big"])


def test_unknown_model_is_404_model_not_found():
    err = assert_openai_error(post(client(), {"model": "gpt-9", "messages": HELLO}), 404, "model_not_found")
    assert err["param"] == "model" and "intent" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "smol", "messages": []}, "messages"),
        ({"model": "smol"}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "smol", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "smol", "messages": HELLO, "n": 9}, "n"),
        ({"model": "smol", "messages": HELLO, "temperature": 9}, "temperature"),
        ({"model": "smol", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "smol", "messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(body, param):
    err = assert_openai_error(post(client(), body), 400, "invalid_request")
    assert err["param"] == param


def test_invalid_json_is_400_not_500():
    resp = client().post("/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_openai_error(resp, 400, "invalid_json")


def test_unknown_route_is_404_in_openai_shape():
    assert_openai_error(client().get("/v1/nothing"), 404)


def test_response_format_json_schema_becomes_a_contract():
    backend = FakeBackend(pieces=('{"a": ', "1}"))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "model": "smol",
        "messages": HELLO,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    assert post(client(backend), body).status_code == 200
    assert backend.calls[0][1].contract.json_schema == schema


@pytest.mark.parametrize(
    ("kind", "status"), [("context_length_exceeded", 400), ("overloaded", 503), ("engine_dead", 503)]
)
def test_generation_errors_map_to_statuses(kind, status):
    backend = FakeBackend(GenerationResult(model="smol", error=GenerationError(kind, "nope")))
    resp = post(client(backend), {"model": "smol", "messages": HELLO})
    assert_openai_error(resp, status, kind)
    if status == 503:
        assert resp.headers["Retry-After"].isdigit()


def test_stream_is_openai_sse_with_usage_and_done():
    body = {"model": "smol", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    resp = post(client(), body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_stream_error_before_first_token_is_a_plain_http_error():
    backend = FakeBackend(GenerationResult(model="smol", error=GenerationError("overloaded", "full")))
    resp = post(client(backend), {"model": "smol", "messages": HELLO, "stream": True})
    assert_openai_error(resp, 503, "overloaded")


def test_api_keys_required_when_configured_but_health_stays_open():
    c = client(keys="k-123")
    assert_openai_error(post(c, {"model": "smol", "messages": HELLO}), 401, "invalid_api_key")
    wrong = post(c, {"model": "smol", "messages": HELLO}, headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401)
    ok = post(c, {"model": "smol", "messages": HELLO}, headers={"Authorization": "Bearer k-123"})
    assert ok.status_code == 200
    assert c.get("/healthz").status_code == 200
    assert c.get("/v1/models").status_code == 401


def test_models_lists_models_specialists_and_pipelines():
    data = client().get("/v1/models").json()["data"]
    kinds = {card["id"]: card["slmfleet"]["kind"] for card in data}
    assert kinds["smol"] == kinds["big"] == "model"
    assert kinds["intent"] == kinds["extract"] == kinds["summarize"] == "specialist"
    assert kinds["pipeline:support-triage"] == "pipeline"


def pipeline_client(backend):
    runner = PipelineRunner(SPEC, backend.complete, ToolRegistry.from_spec(SPEC))
    return TestClient(build_api(SPEC, backend, runner=runner), raise_server_exceptions=False)


def test_pipeline_run_endpoint_runs_steps_and_reports_them():
    backend = FakeBackend(GenerationResult(model="smol", text="other", finish_reason="stop", completion_tokens=1))
    resp = pipeline_client(backend).post("/v1/pipelines/support-triage/runs", json={"inputs": {"message": "hi"}})
    assert resp.status_code == 200, resp.text
    steps = {s["name"]: s["status"] for s in resp.json()["steps"]}
    assert steps["classify"] == "ok" and steps["extract"] == "skipped"  # "other" is not an order intent
    assert [m for m, _ in backend.calls][:1] == ["smol"]


def test_unknown_pipeline_is_404_both_ways():
    c = pipeline_client(FakeBackend())
    assert_openai_error(c.post("/v1/pipelines/nope/runs", json={}), 404, "pipeline_not_found")
    assert_openai_error(post(c, {"model": "pipeline:nope", "messages": HELLO}), 404, "model_not_found")


def test_pipeline_as_chat_model_answers_in_openai_shape():
    backend = FakeBackend(GenerationResult(model="smol", text="other", finish_reason="stop", completion_tokens=1))
    body = post(pipeline_client(backend), {"model": "pipeline:support-triage", "messages": HELLO}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "other"  # the reply step's (fake) text
    assert body["slmfleet"]["pipeline"] == "support-triage"


def test_half_a_character_and_a_seed_beyond_64_bits_are_400s_naming_the_field():
    """Both reached the engine once and came back as 500s (tests/reliability/crash_corpus.json)."""
    raw = '{"model": "smol", "messages": [{"role": "user", "content": "half an emoji: \\ud83e"}]}'
    resp = client().post("/v1/chat/completions", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert_openai_error(resp, 400)
    assert resp.json()["error"]["param"] == "messages.0.content" and "lone UTF-16 surrogate" in resp.text
    whole = '{"model": "smol", "messages": [{"role": "user", "content": "a whole one: \\ud83d\\ude00"}]}'
    ok = client().post("/v1/chat/completions", content=whole.encode(), headers={"Content-Type": "application/json"})
    assert ok.status_code == 200
    seeded = post(client(), {"model": "smol", "messages": HELLO, "seed": 2**64})
    assert_openai_error(seeded, 400)
    assert seeded.json()["error"]["param"] == "seed"
