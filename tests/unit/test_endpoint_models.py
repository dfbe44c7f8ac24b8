"""Models served by an outside OpenAI-compatible API (``models.<name>.endpoint``): the spec's rules, the request the
router sends, the API's answers and failures as the fleet's results, the backend's retry and health policy, and
the renders that leave such a model out of placement and Serve."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.cli import main
from cluster.placement import plan_fleet
from cluster.render import rayservice as rs
from cluster.render.serve_config import build_serve_config
from cluster.spec import EndpointSpec, SpecialistSpec, load_spec, parse_spec
from cluster.spec_errors import SpecError
from deployments.protocol import (
    Contract,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    ToolCall,
    ToolDef,
    Tools,
)
from deployments.router import ingress as router
from deployments.router.api import model_cards
from deployments.router.endpoint_backend import EndpointCaller, chat_body
from deployments.router.fleet_health import ServeDetailsCache, is_serving
from deployments.router.ingress import ServeBackend

ROOT = Path(__file__).resolve().parents[2]
URL = "https://api.example.com/v1"
PUBLIC_KEY = "x25519:" + "A" * 43 + "="
HOSTED = {"url": URL, "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}
OPENAI = EndpointSpec(url=URL, model="gpt-4o-mini")
VLLM = EndpointSpec(url=URL, model="Qwen/Qwen2.5-72B-Instruct", structured_outputs="vllm")
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
HI = [{"role": "user", "content": "hi"}]


def fleet(**big) -> dict:
    """A small model escalating to ``big``, an llm-tier model behind an endpoint."""
    return {
        "models": {
            "smol": {"source": "bundled:smollm2-135m-instruct"},
            "big": {"endpoint": dict(HOSTED), "tier": "llm", "price_per_1k_tokens": 0.005, "log_usage": True, **big},
        },
        "specialists": {"extract": {"model": "smol", "escalation": {"to": "big"}}},
        "pools": {"l4": {"accelerator": "L4", "gpus_per_node": 1, "gpu_memory_gib": 22.5}},
        "usage_log": {"public_key": PUBLIC_KEY},
    }


def issues_of(data) -> list:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.issues


# ---- the spec ----------------------------------------------------------------------------------------------


def test_an_endpoint_model_validates_as_an_escalation_target_and_splits_from_engine_models():
    spec = parse_spec(fleet())
    big = spec.models["big"]
    assert big.source is None and big.tier == "llm" and big.log_usage and big.price_per_1k_tokens == 0.005
    assert big.endpoint.structured_outputs == "openai" and big.endpoint.max_concurrent_requests == 64
    assert spec.specialists["extract"].escalation.to == "big"
    assert list(spec.engine_models()) == ["smol"]
    assert spec.endpoint_models() == {"big": EndpointSpec(**HOSTED)}


def test_a_model_needs_a_source_or_an_endpoint_and_not_both():
    (neither,) = issues_of({"models": {"big": {"tier": "llm"}}})
    assert neither.path == "models.big.source" and "endpoint" in neither.fix
    (both,) = issues_of({"models": {"big": {"source": "x/y", "endpoint": HOSTED}}})
    assert both.path == "models.big.endpoint" and both.value == URL


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool", "l4"),
        ("lora", {"max_loras": 2}),
        ("autoscaling", {"max_replicas": 2}),
        ("max_model_len", 4096),
        ("engine", {"enforce_eager": False}),
    ],
)
def test_an_engine_setting_on_an_endpoint_model_is_refused_at_its_path(field, value):
    (issue,) = issues_of(fleet(**{field: value}))
    assert issue.path == f"models.big.{field}" and issue.fix == f"remove '{field}'"


@pytest.mark.parametrize(
    ("field", "value"),
    [("url", "api.example.com/v1"), ("api_key_env", "OPENAI-KEY"), ("structured_outputs", "grpc"), ("model", "")],
)
def test_a_malformed_endpoint_field_is_refused_at_its_path(field, value):
    (issue,) = issues_of(fleet(endpoint={**HOSTED, field: value}))
    assert issue.path == f"models.big.endpoint.{field}" and issue.value == value


# ---- chat_body: the request the API gets -------------------------------------------------------------------


def test_the_specialists_instructions_and_defaults_apply_and_the_request_overrides_them():
    specialist = SpecialistSpec(
        model="big", instructions="Be terse.", sampling={"temperature": 0.3, "top_p": 0.9, "max_tokens": 50}
    )
    request = GenerationRequest("r", HI, specialist_spec=specialist, max_tokens=20, stop=["\n"], seed=3)
    body = chat_body(OPENAI, request)
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.3, 0.9, 20)
    assert body["stop"] == ["\n"] and body["seed"] == 3
    assert not {"logprobs", "presence_penalty", "tools", "response_format", "max_tokens"} & set(body)
    bare = chat_body(OPENAI, GenerationRequest("r", HI, temperature=1.0, stop=[]))
    assert bare["messages"] == HI and "stop" not in bare  # an empty stop list is no stop
    assert (bare["temperature"], bare["top_p"], bare["max_completion_tokens"]) == (1.0, 1.0, 256)
    on_vllm = chat_body(VLLM, request)  # vLLM's server takes the limit as max_tokens
    assert on_vllm["max_tokens"] == 20 and "max_completion_tokens" not in on_vllm


def test_logprobs_and_tools_go_out_in_openais_shape():
    lookup = ToolDef("lookup", "Find an order", {"type": "object", "properties": {"id": {"type": "string"}}})
    tools = Tools((lookup, ToolDef("cancel")), choice="lookup", parallel=False)
    body = chat_body(OPENAI, GenerationRequest("r", HI, logprobs=True, top_logprobs=3, tools=tools))
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "lookup", "description": "Find an order", "parameters": lookup.parameters},
    }
    assert [t["function"]["name"] for t in body["tools"]] == ["lookup", "cancel"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert body["parallel_tool_calls"] is False
    required = chat_body(OPENAI, GenerationRequest("r", HI, tools=Tools((lookup,), choice="required")))
    assert required["tool_choice"] == "required" and required["parallel_tool_calls"] is True


def test_a_json_schema_contract_is_response_format_for_openai_and_structured_outputs_for_vllm():
    request = GenerationRequest("r", HI, contract=Contract(json_schema=SCHEMA))
    openai = chat_body(OPENAI, request)
    assert openai["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert "structured_outputs" not in openai
    vllm = chat_body(VLLM, request)
    assert vllm["structured_outputs"] == {"json": SCHEMA} and "response_format" not in vllm
    # a specialist's declared contract applies when the request carries none
    specialist = SpecialistSpec(model="big", output={"json_schema": SCHEMA})
    assert chat_body(VLLM, GenerationRequest("r", HI, specialist_spec=specialist))["structured_outputs"] == {
        "json": SCHEMA
    }


@pytest.mark.parametrize(
    ("contract", "vllm_field"),
    [(Contract(choice=("yes", "no")), {"choice": ["yes", "no"]}), (Contract(regex=r"\d+"), {"regex": r"\d+"})],
)
def test_choice_and_regex_contracts_go_only_to_vllm(contract, vllm_field):
    request = GenerationRequest("r", HI, contract=contract)
    assert not {"response_format", "structured_outputs"} & set(chat_body(OPENAI, request))
    assert chat_body(VLLM, request)["structured_outputs"] == vllm_field


def test_vllm_sampling_extras_are_refused_by_an_openai_api_and_merged_for_vllm():
    request = GenerationRequest("r", HI, extra_sampling={"top_k": 5, "min_p": 0.1})
    refused = chat_body(OPENAI, request)
    assert isinstance(refused, GenerationError) and refused.kind == "bad_request"
    assert "min_p, top_k" in refused.message
    body = chat_body(VLLM, request)
    assert body["top_k"] == 5 and body["min_p"] == 0.1


# ---- EndpointCaller: answers and failures ------------------------------------------------------------------

ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Looking it up.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "A1"}'}}
                ],
            },
            "logprobs": {"content": [{"token": "Look", "logprob": -0.5}, {"token": "ing", "logprob": -1.5}]},
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}


def caller_of(handler, environ=None) -> EndpointCaller:
    return EndpointCaller(environ=environ or {}, transport=httpx.MockTransport(handler))


def answering(status=200, seen=None, **response):
    """An async handler answering every call alike, recording the requests in ``seen``."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, **response)

    return handler


def complete(caller, endpoint=OPENAI, request=None) -> GenerationResult:
    return asyncio.run(caller.complete("big", endpoint, request or GenerationRequest("r", HI)))


def test_an_answer_becomes_the_fleets_result_and_the_key_goes_as_a_bearer_token():
    seen = []
    endpoint = EndpointSpec(**HOSTED, timeout_s=30)
    result = complete(caller_of(answering(json=ANSWER, seen=seen), {"OPENAI_API_KEY": "sk-test"}), endpoint)
    assert result.error is None and result.model == "big"
    assert (result.text, result.finish_reason) == ("Looking it up.", "tool_calls")
    assert (result.prompt_tokens, result.completion_tokens) == (12, 7)
    assert result.tool_calls == [ToolCall("call_1", "lookup", '{"id": "A1"}')]
    assert result.mean_logprob == pytest.approx(-1.0)
    (sent,) = seen
    assert sent.method == "POST" and str(sent.url) == f"{URL}/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.extensions["timeout"]["read"] == 30 and sent.extensions["timeout"]["connect"] == 10
    body = json.loads(sent.content)
    assert body["model"] == "gpt-4o-mini" and body["messages"] == HI and "stream" not in body


def test_a_200_that_carries_an_error_instead_of_a_completion_is_engine_dead():
    caller = caller_of(answering(json={"error": {"message": "upstream provider failed"}}))
    error = complete(caller).error
    assert error is not None and error.kind == "engine_dead" and caller.in_flight == {"big": 0}


def test_a_retry_after_that_is_no_number_of_seconds_is_one_second():
    for header in ("inf", "1e999", "Wed, 21 Oct 2026 07:28:00 GMT"):
        caller = caller_of(answering(429, headers={"Retry-After": header}, json={"error": {"message": "slow"}}))
        assert complete(caller).error.retry_after_s == 1


def test_the_apis_refusal_foresees_its_retry_after_and_the_local_bound_foresees_no_wait():
    """What the refusal memo holds other requests back by: the API's Retry-After, but nothing for the router's own
    bound (a place frees as soon as one call ends)."""
    api = complete(caller_of(answering(429, headers={"Retry-After": "4"}, json={}))).error
    assert api.expected_wait_s == 4.0
    caller = caller_of(answering(json=ANSWER))
    caller.in_flight["big"] = OPENAI.max_concurrent_requests
    local = complete(caller).error
    assert local.kind == "overloaded" and local.expected_wait_s == 0.0 and local.retry_after_s == 1


def test_a_200_that_is_not_json_is_engine_dead():
    caller = caller_of(answering(text="<html>gateway</html>"))
    error = complete(caller).error
    assert error.kind == "engine_dead" and "no completion" in error.message and caller.in_flight == {"big": 0}


@pytest.mark.parametrize(
    ("endpoint", "environ"),
    [
        (EndpointSpec(url=URL + "/", model="m"), {"OPENAI_API_KEY": "sk-test"}),  # no api_key_env: no key sent
        (EndpointSpec(url=URL + "/", model="m", api_key_env="OPENAI_API_KEY"), {}),  # the variable is unset
    ],
)
def test_no_authorization_without_a_key_and_a_trailing_slash_is_handled(endpoint, environ):
    seen = []
    assert complete(caller_of(answering(json=ANSWER, seen=seen), environ), endpoint).error is None
    assert str(seen[0].url) == f"{URL}/chat/completions" and "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("reply", "kind", "retry_after", "said"),
    [
        ((429, {"Retry-After": "7"}, "Rate limit reached"), "overloaded", 7, "at capacity"),
        ((503, {}, "busy"), "overloaded", 1, "at capacity"),
        ((400, {}, "This model's maximum context length is 8192 tokens"), "context_length_exceeded", None, "8192"),
        ((400, {}, "Invalid value for 'temperature'"), "bad_request", None, "Invalid value for 'temperature'"),
        ((500, {}, "internal error"), "engine_dead", None, "answered 500"),
        ((401, {}, "Incorrect API key provided"), "engine_dead", None, "answered 401"),
    ],
    ids=["429", "503", "context-length", "400", "500", "401"],
)
def test_the_apis_refusals_become_failure_kinds(reply, kind, retry_after, said):
    status, headers, message = reply
    caller = caller_of(answering(status, headers=headers, json={"error": {"message": message, "type": "x"}}))
    error = complete(caller).error
    assert error.kind == kind and error.retry_after_s == retry_after and said in error.message
    assert caller.in_flight == {"big": 0}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [(httpx.ConnectError, "engine_dead"), (httpx.ConnectTimeout, "engine_dead"), (httpx.ReadTimeout, "timeout")],
    ids=["connect", "connect-timeout", "read-timeout"],
)
def test_an_api_that_does_not_answer_is_engine_dead_or_a_timeout(exc, kind):
    async def handler(request):
        raise exc("no answer", request=request)

    caller = caller_of(handler)
    assert complete(caller).error.kind == kind and caller.in_flight == {"big": 0}


def test_calls_beyond_max_concurrent_requests_are_refused_at_once_until_one_finishes():
    endpoint = EndpointSpec(url=URL, model="m", max_concurrent_requests=1)

    async def scenario():
        started, release, calls = asyncio.Event(), asyncio.Event(), []

        async def handler(request):
            calls.append(request)
            if len(calls) == 1:
                started.set()
                await release.wait()
            return httpx.Response(200, json=ANSWER)

        caller = caller_of(handler)
        request = GenerationRequest("r", HI)
        first = asyncio.create_task(caller.complete("big", endpoint, request))
        await asyncio.wait_for(started.wait(), 5)
        held = dict(caller.in_flight)
        second = await asyncio.wait_for(caller.complete("big", endpoint, request), 1)
        release.set()
        first_result = await asyncio.wait_for(first, 5)
        third = await asyncio.wait_for(caller.complete("big", endpoint, request), 5)
        return held, first_result, second, third, len(calls), dict(caller.in_flight)

    held, first, second, third, calls, after = asyncio.run(scenario())
    assert held == {"big": 1}
    assert second.error.kind == "overloaded" and second.error.retry_after_s == 1
    assert first.error is None and third.error is None and third.text == "Looking it up."
    assert calls == 2 and after == {"big": 0}  # the refused call never reached the API


# ---- streams -----------------------------------------------------------------------------------------------


def delta(**fields) -> dict:
    return {"choices": [{"index": 0, "delta": fields}]}


def sse(*chunks, done=True) -> str:
    text = ": keep-alive\n\n" + "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return text + ("data: [DONE]\n\n" if done else "")


STREAM = sse(
    delta(role="assistant", content=""),
    delta(content="Hel"),
    delta(content="lo"),
    delta(
        tool_calls=[{"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": ""}}]
    ),
    delta(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "cancel", "arguments": "{}"}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"id": '}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '"A1"}'}}]),
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}},
)
STREAM_CALLS = [ToolCall("call_a", "lookup", '{"id": "A1"}'), ToolCall("call_b", "cancel", "{}")]
SSE_HEADERS = {"content-type": "text/event-stream"}


def collect(caller, endpoint=OPENAI) -> list:
    async def items():
        return [item async for item in caller.stream("big", endpoint, GenerationRequest("r", HI))]

    return asyncio.run(items())


def test_a_stream_gives_text_deltas_then_whole_tool_calls_then_the_result():
    seen = []
    caller = caller_of(answering(text=STREAM, headers=SSE_HEADERS, seen=seen))
    *deltas, result = collect(caller)
    assert [d.text for d in deltas[:2]] == ["Hel", "lo"] and all(d.tool_call is None for d in deltas[:2])
    assert [d.tool_call for d in deltas[2:]] == STREAM_CALLS and all(not d.text for d in deltas[2:])
    assert isinstance(result, GenerationResult) and result.error is None
    assert (result.text, result.finish_reason) == ("Hello", "tool_calls")
    assert (result.prompt_tokens, result.completion_tokens) == (9, 5)
    assert result.tool_calls == STREAM_CALLS
    body = json.loads(seen[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert caller.in_flight == {"big": 0}


def test_a_stream_the_consumer_leaves_early_frees_its_place():
    caller = caller_of(answering(text=STREAM, headers=SSE_HEADERS))

    async def first_then_close():
        stream = caller.stream("big", OPENAI, GenerationRequest("r", HI))
        first = await anext(stream)
        held = dict(caller.in_flight)
        await stream.aclose()  # what the stream guard does when the client goes away
        return first, held

    first, held = asyncio.run(first_then_close())
    assert first.text == "Hel" and held == {"big": 1} and caller.in_flight == {"big": 0}


def test_a_refused_stream_is_one_failure_result():
    caller = caller_of(answering(429, headers={"Retry-After": "3"}, json={"error": {"message": "slow down"}}))
    (only,) = collect(caller)
    assert isinstance(only, GenerationResult) and only.error.kind == "overloaded" and only.error.retry_after_s == 3
    assert caller.in_flight == {"big": 0}


def test_a_failed_stream_gives_back_its_place_before_its_failure_is_read():
    caller = caller_of(answering(429, json={"error": {"message": "slow down"}}))

    async def first_item():
        items = caller.stream("big", OPENAI, GenerationRequest("r", HI))
        item = await anext(items)  # a consumer that reads the failure and goes on to escalate, leaving it open
        return item, dict(caller.in_flight)

    item, in_flight = asyncio.run(first_item())
    assert item.error.kind == "overloaded" and in_flight == {"big": 0}


def test_a_chunk_that_is_not_json_ends_the_stream_as_engine_dead():
    body = "data: " + json.dumps(delta(content="a")) + "\n\ndata: {not json\n\n"
    caller = caller_of(answering(text=body, headers=SSE_HEADERS))
    items = collect(caller)
    assert [type(i) for i in items] == [StreamDelta, GenerationResult] and items[0].text == "a"
    assert items[-1].error.kind == "engine_dead" and caller.in_flight == {"big": 0}


def test_a_stream_closed_before_its_last_chunk_is_a_cut_answer_not_a_whole_one():
    body = "data: " + json.dumps(delta(content="half an ans")) + "\n\n"  # no finish_reason, no [DONE]
    items = collect(caller_of(answering(text=body, headers=SSE_HEADERS)))
    assert [type(i) for i in items] == [StreamDelta, GenerationResult] and items[0].text == "half an ans"
    assert items[-1].error.kind == "engine_dead" and "cut" in items[-1].error.message


# ---- ServeBackend: endpoint models without Ray -------------------------------------------------------------


class Scripted:
    """A handler giving the scripted responses in order; counts the calls."""

    def __init__(self, *responses: httpx.Response):
        self.responses, self.calls = list(responses), 0

    async def __call__(self, request):
        self.calls += 1
        return self.responses.pop(0)


def backend_of(handler, monkeypatch, handles=None) -> ServeBackend:
    monkeypatch.setattr(router, "RETRY_DELAY_S", 0)
    caller = EndpointCaller(environ={}, transport=httpx.MockTransport(handler))
    return ServeBackend(handles or {}, {}, None, endpoints={"big": OPENAI}, endpoint_caller=caller)


def test_a_plain_call_is_retried_once_after_a_dead_endpoint(monkeypatch):
    handler = Scripted(httpx.Response(502, text="bad gateway"), httpx.Response(200, json=ANSWER))
    result = asyncio.run(backend_of(handler, monkeypatch).complete("big", GenerationRequest("r", HI)))
    assert result.error is None and result.text == "Looking it up." and handler.calls == 2
    refused = Scripted(httpx.Response(400, json={"error": {"message": "bad"}}), httpx.Response(200, json=ANSWER))
    result = asyncio.run(backend_of(refused, monkeypatch).complete("big", GenerationRequest("r", HI)))
    assert result.error.kind == "bad_request" and refused.calls == 1  # the client's mistake is not retried


def stream_items(backend) -> list:
    async def items():
        return [item async for item in backend.stream("big", GenerationRequest("r", HI))]

    return asyncio.run(items())


def test_an_endpoint_stream_through_the_backend_and_its_retry_before_the_first_text(monkeypatch):
    handler = Scripted(httpx.Response(200, text=STREAM, headers=SSE_HEADERS))
    items = stream_items(backend_of(handler, monkeypatch))
    assert [i.text for i in items[:2]] == ["Hel", "lo"] and items[-1].text == "Hello" and handler.calls == 1
    failed_first = Scripted(httpx.Response(500, text="oops"), httpx.Response(200, text=STREAM, headers=SSE_HEADERS))
    items = stream_items(backend_of(failed_first, monkeypatch))
    assert failed_first.calls == 2
    assert [i.text for i in items[:2]] == ["Hel", "lo"] and items[-1].error is None and items[-1].text == "Hello"


def test_a_client_leaving_a_backend_stream_ends_the_api_call_at_once(monkeypatch):
    backend = backend_of(Scripted(httpx.Response(200, text=STREAM, headers=SSE_HEADERS)), monkeypatch)

    async def leave_after_the_first_delta():
        items = backend.stream("big", GenerationRequest("r", HI))
        first = await anext(items)
        during = dict(backend.endpoint_caller.in_flight)
        await items.aclose()  # what the stream guard does when the client goes
        return first, during, dict(backend.endpoint_caller.in_flight)

    first, during, after = asyncio.run(leave_after_the_first_delta())
    assert first.text == "Hel" and during == {"big": 1} and after == {"big": 0}


def test_an_endpoint_stream_cut_after_text_left_is_not_retried(monkeypatch):
    cut = "data: " + json.dumps(delta(content="Hel")) + "\n\ndata: {not json\n\n"
    handler = Scripted(httpx.Response(200, text=cut), httpx.Response(200, text=STREAM, headers=SSE_HEADERS))
    items = stream_items(backend_of(handler, monkeypatch))
    assert handler.calls == 1 and items[0].text == "Hel" and items[-1].error.kind == "engine_dead"


def serve_details(**models):
    """Serve's instance details for engine models given as their number of running replicas."""
    apps = {}
    for model, running in models.items():
        deployment = {"status": "HEALTHY", "replicas": [{"state": "RUNNING"}] * running, "target_num_replicas": 1}
        apps[f"model-{model}"] = {"deployments": {f"model-{model}": deployment}}
    return {"applications": apps}


def test_an_endpoint_model_is_external_in_health_and_always_ready(monkeypatch):
    fetched = []

    async def fetch():
        fetched.append(1)
        return serve_details(smol=1)  # Serve has no app for big: an engine model in its place would be down

    async def check():
        backend = backend_of(Scripted(), monkeypatch, handles={"smol": object()})
        backend.serve_details = ServeDetailsCache(fetch)
        unready_big = await backend.unready("big")
        fetched_before_health = len(fetched)
        return unready_big, fetched_before_health, await backend.health()

    unready_big, fetched_before_health, health = asyncio.run(check())
    assert unready_big is None and fetched_before_health == 0  # no controller call for an outside API
    assert health == {
        "smol": {"state": "ready", "running": 1, "target": 1},
        "big": {"state": "external", "endpoint": "api.example.com"},
    }
    assert is_serving(health)


# ---- renders: placement, Serve config, RayService, model cards ---------------------------------------------


def default_fleet_with_hosted_big() -> dict:
    data = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    data["models"]["big"] = {"endpoint": dict(HOSTED), "tier": "llm", "price_per_1k_tokens": 0.005}
    return data


def production_with_hosted() -> tuple[dict, dict]:
    """examples/production.yaml as it is, and with an endpoint model added (api key from OPENAI_API_KEY)."""
    data = yaml.safe_load((ROOT / "examples" / "production.yaml").read_text())
    hosted = {**data, "models": {**data["models"], "hosted": {"endpoint": dict(HOSTED), "tier": "llm"}}}
    return data, hosted


def test_the_serve_config_has_no_app_for_an_endpoint_model_but_the_routers_spec_holds_it():
    spec = parse_spec(default_fleet_with_hosted_big())
    config = build_serve_config(spec, plan_fleet(spec))
    assert [app["name"] for app in config["applications"]] == ["model-smol", "slmfleet"]
    (user_config,) = [d["user_config"] for d in config["applications"][-1]["deployments"]]
    assert user_config["spec"]["models"]["big"]["endpoint"] == HOSTED
    assert parse_spec(user_config["spec"]) == spec


def test_the_plan_places_no_endpoint_model_and_is_unchanged_by_one():
    plain, hosted = production_with_hosted()
    plan = plan_fleet(parse_spec(hosted))
    assert "hosted" not in {m.model for m in plan.models} | {r.model for r in plan.replicas}
    assert {m.model for m in plan.models} == set(plain["models"])
    assert plan.to_dict() == plan_fleet(parse_spec(plain)).to_dict()


def test_the_rayservice_containers_take_the_endpoints_key_from_its_secret():
    spec = parse_spec(production_with_hosted()[1])
    expected = {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "slmfleet-endpoint-keys", "key": "OPENAI_API_KEY", "optional": False}},
    }
    assert expected in rs.container_env(spec)
    doc = rs.build_rayservice(spec, plan_fleet(spec))
    containers = []

    def walk(node):
        if isinstance(node, dict):
            containers.extend(node.get("containers", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert containers and all(expected in c["env"] for c in containers)
    assert not any(e["name"] == "OPENAI_API_KEY" for e in rs.container_env(parse_spec(production_with_hosted()[0])))


def test_model_cards_show_an_endpoint_models_host_and_model_and_no_source():
    cards = {card["id"]: card["slmfleet"] for card in model_cards(parse_spec(fleet()))}
    assert cards["big"] == {
        "kind": "model",
        "tier": "llm",
        "endpoint": {"host": "api.example.com", "model": "gpt-4o-mini"},
    }
    assert cards["smol"]["source"] == "bundled:smollm2-135m-instruct" and "endpoint" not in cards["smol"]


def test_plan_prints_the_endpoint_models_apart_from_the_placement(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(default_fleet_with_hosted_big()))
    assert main(["plan", str(path)]) == 0
    assert "big: served by its endpoint (api.example.com, model gpt-4o-mini), no GPU here" in capsys.readouterr().out
    assert main(["plan", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["endpoints"] == {"big": "api.example.com, model gpt-4o-mini"} and list(printed["models"]) == ["smol"]


def test_the_hosted_llm_example_validates_and_places_only_its_small_model():
    spec = load_spec(Path(__file__).parents[2] / "examples" / "hosted-llm.yaml")
    assert list(spec.engine_models()) == ["smol"] and spec.endpoint_models()["big"].api_key_env == "OPENAI_API_KEY"
    assert [m.model for m in plan_fleet(spec).models] == ["smol"]
    assert spec.specialists["intent"].escalation.to == "big"
