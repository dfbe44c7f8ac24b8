"""/v1/chat/completions against OpenAI's own types: the request field census, validation, bodies and chunks.

Every 200 body is parsed as ``openai.types.chat.ChatCompletion`` and every streamed chunk as
``ChatCompletionChunk``; the real ``openai`` client drives the app too (over FastAPI's TestClient, no sockets).
"""

import asyncio
import json
import math
from pathlib import Path

import openai
import pytest
import yaml
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsBase, CompletionCreateParamsStreaming
from pydantic import BaseModel

from cluster.spec import parse_spec
from deployments.protocol import GenerationResult, StreamDelta, ToolCall
from deployments.router import api as api_module
from deployments.router.api import build_api
from deployments.router.openai_api import (
    MAX_N,
    MAX_TOP_LOGPROBS,
    NO_OP_FIELDS,
    REFUSED_FIELDS,
    VLLM_SAMPLING_EXTRAS,
    ChatCompletionRequest,
)

ROOT = Path(__file__).resolve().parents[2]


def without_escalation(data):
    """fleet.yaml's models and specialists with no escalation policy: answers are only checked, never re-run."""
    for section in ("models", "specialists"):
        for entry in data[section].values():
            entry.pop("escalation", None)
    return data


SPEC = parse_spec(without_escalation(yaml.safe_load((ROOT / "fleet.yaml").read_text())))
HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS_CALL = ToolCall("call_abc", "get_weather", '{"city":"Paris"}')


def answer(text="Hello", **fields):
    fields = {"finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 2, **fields}
    return GenerationResult(model="smol", text=text, **fields)


class FakeBackend:
    """Answers every call with ``result`` (streamed as ``pieces``, then the result); records every request."""

    def __init__(self, result=None, pieces=None):
        self.result = result or answer()
        self.pieces = pieces if pieces is not None else (self.result.text,)
        self.calls = []

    async def complete(self, model, request):
        self.calls.append((model, request))
        return self.result

    async def stream(self, model, request):
        self.calls.append((model, request))
        if self.result.error is None:
            for piece in self.pieces:
                yield StreamDelta(piece)
            for call in self.result.tool_calls:
                yield StreamDelta(tool_call=call)
        yield self.result

    async def health(self):
        return {"smol": {"state": "ready"}, "big": {"state": "ready"}}

    async def unready(self, model):
        return None


def app(backend=None):
    return build_api(SPEC, backend or FakeBackend())


def post(body, backend=None):
    with TestClient(app(backend), raise_server_exceptions=False) as c:
        return c.post("/v1/chat/completions", json=body)


def chat(**fields):
    return {"model": "smol", "messages": HELLO, **fields}


def ok(resp):
    """The 200 body, which must parse as OpenAI's ChatCompletion."""
    assert resp.status_code == 200, resp.text
    return ChatCompletion.model_validate(resp.json())


def chunks(resp):
    """Every SSE chunk of a 200 stream, each parsed as OpenAI's ChatCompletionChunk; the stream ends with [DONE]."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]


def error(resp, status=400, code=None, param=None, says=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert code is None or err["code"] == code, err
    assert param is None or err["param"] == param, err
    assert says is None or says in err["message"], err["message"]
    return err


# --- the field census ----------------------------------------------------------------------------------------

OPENAI_FIELDS = CompletionCreateParamsBase.__required_keys__ | CompletionCreateParamsBase.__optional_keys__
HONOURED = set(ChatCompletionRequest.model_fields) - {"vllm_extras"}


def test_every_openai_field_is_honoured_ignored_or_refused_exactly_once():
    decisions = [HONOURED, set(NO_OP_FIELDS), set(REFUSED_FIELDS)]
    for key in OPENAI_FIELDS:
        assert sum(key in d for d in decisions) == 1, key
    assert not (
        HONOURED & set(NO_OP_FIELDS) or HONOURED & set(REFUSED_FIELDS) or set(NO_OP_FIELDS) & set(REFUSED_FIELDS)
    )


def test_no_field_of_ours_is_outside_openais_set():
    streaming = CompletionCreateParamsStreaming.__required_keys__ | CompletionCreateParamsStreaming.__optional_keys__
    assert set().union(HONOURED, NO_OP_FIELDS, REFUSED_FIELDS) - OPENAI_FIELDS == {"stream"}
    assert "stream" in streaming  # it lives on the streaming / non-streaming variants
    assert not set(VLLM_SAMPLING_EXTRAS) & (OPENAI_FIELDS | HONOURED)


def test_every_decision_has_a_reason():
    assert all(why.strip() for why in (*NO_OP_FIELDS.values(), *REFUSED_FIELDS.values()))


REFUSED_VALUES = {
    "audio": {"voice": "alloy", "format": "wav"},
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "web_search_options": {"search_context_size": "low"},
    "moderation": {"model": "omni-moderation-latest"},
}
NO_OP_VALUES = {
    "user": "user-1",
    "safety_identifier": "hash-1",
    "metadata": {"team": "a"},
    "store": True,
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prediction": {"type": "content", "content": "Hello"},
    "reasoning_effort": "low",
    "verbosity": "low",
}


def test_the_census_values_cover_every_decision():
    assert set(REFUSED_VALUES) == set(REFUSED_FIELDS)
    assert set(NO_OP_VALUES) == set(NO_OP_FIELDS)


@pytest.mark.parametrize("field", sorted(REFUSED_FIELDS))
def test_refused_fields_are_400s_naming_them(field):
    backend = FakeBackend()
    error(post(chat(**{field: REFUSED_VALUES[field]}), backend), 400, says=f"'{field}'")
    assert backend.calls == []


@pytest.mark.parametrize("field", sorted(REFUSED_FIELDS))
def test_refused_fields_left_empty_are_accepted(field):
    ok(post(chat(**{field: None})))


def test_an_empty_web_search_options_still_asks_for_web_search():
    error(post(chat(web_search_options={})), 400, says="'web_search_options'")


@pytest.mark.parametrize("field", sorted(NO_OP_FIELDS))
def test_no_op_fields_are_accepted_and_not_forwarded(field):
    backend = FakeBackend()
    ok(post(chat(**{field: NO_OP_VALUES[field]}), backend))
    ((_, request),) = backend.calls
    assert request.extra_sampling == {}


def test_an_unknown_field_is_a_400_unknown_parameter_naming_it():
    error(post(chat(best_of=3)), 400, code="unknown_parameter", param="best_of")


EXTRA_VALUES = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "min_tokens": 3,
    "stop_token_ids": [2],
    "bad_words": ["darn"],
}


def test_every_vllm_extra_reaches_the_generation_request():
    assert set(EXTRA_VALUES) == set(VLLM_SAMPLING_EXTRAS)
    backend = FakeBackend()
    ok(post(chat(**EXTRA_VALUES), backend))
    assert backend.calls[0][1].extra_sampling == EXTRA_VALUES


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", "20"), ("top_k", 2.5), ("top_k", True), ("min_p", "0.1"), ("stop_token_ids", 2), ("bad_words", "x")],
)
def test_a_vllm_extra_of_the_wrong_type_is_a_400(field, value):
    error(post(chat(**{field: value})), 400, says=f"'{field}'")


# --- request validation --------------------------------------------------------------------------------------


def test_top_logprobs_above_openais_cap_is_a_400():
    error(post(chat(logprobs=True, top_logprobs=MAX_TOP_LOGPROBS + 1)), 400, param="top_logprobs")


def test_top_logprobs_without_logprobs_is_a_400():
    error(post(chat(top_logprobs=2)), 400, says="logprobs")


def test_n_above_the_cap_is_a_400():
    error(post(chat(n=MAX_N + 1)), 400, param="n")


def test_n_2_makes_two_generations_and_two_choices():
    backend = FakeBackend()
    body = ok(post(chat(n=2, seed=10), backend))
    assert [c.index for c in body.choices] == [0, 1]
    assert len(backend.calls) == 2
    assert [r.seed for _, r in backend.calls] == [10, 11]  # each choice its own seed
    assert body.usage.completion_tokens == 4  # both choices counted


def test_n_2_with_stream_is_a_400():
    error(post(chat(n=2, stream=True)), 400, says="n > 1")


def test_tool_choice_naming_an_unknown_tool_is_a_400():
    named = {"type": "function", "function": {"name": "get_stock"}}
    error(post(chat(tools=[WEATHER], tool_choice=named)), 400, says="get_stock")


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_without_tools_is_a_400(choice):
    error(post(chat(tool_choice=choice)), 400, says="tool_choice needs tools")


def test_a_tool_whose_parameters_are_not_a_json_schema_is_a_400_naming_it():
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
    error(post(chat(tools=[WEATHER, bad])), 400, param="tools.1.function.parameters")
    error(post(chat(tools=[bad])), 400, param="tools.0.function.parameters", says="not a valid JSON schema")


def test_a_response_format_with_an_invalid_schema_is_a_400():
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    error(post(chat(response_format=fmt)), 400, param="response_format.json_schema.schema")


def test_an_image_content_part_is_a_400():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]
    error(post(chat(messages=messages)), 400, param="messages.0.content", says="image_url")


def test_text_content_parts_are_joined():
    backend = FakeBackend()
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    ok(post(chat(messages=[{"role": "user", "content": parts}]), backend))
    assert backend.calls[0][1].messages[0]["content"] == parts  # travels as sent; the engine side joins parts


def test_a_tool_message_without_tool_call_id_is_a_400():
    messages = [*HELLO, {"role": "tool", "content": "18C"}]
    error(post(chat(messages=messages)), 400, param="messages.1", says="tool_call_id")


def test_a_tool_call_history_reaches_the_backend_openai_shaped():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    backend = FakeBackend()
    ok(post(chat(messages=messages, tools=[WEATHER]), backend))
    sent = backend.calls[0][1].messages
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert sent[2] == {"role": "tool", "content": "18C", "tool_call_id": "call_1"}


# --- bodies ---------------------------------------------------------------------------------------------------


def test_a_text_answer_is_a_chat_completion():
    body = ok(post(chat()))
    assert body.choices[0].message.content == "Hello"
    assert body.choices[0].finish_reason == "stop"
    assert body.choices[0].logprobs is None
    assert body.usage.total_tokens == 9


def test_a_tool_call_answer_has_no_content_and_finish_reason_tool_calls():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    body = ok(post(chat(tools=[WEATHER], tool_choice="required"), backend))
    choice = body.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_abc", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    tools = backend.calls[0][1].tools
    assert (tools.choice, [t.name for t in tools.tools]) == ("required", ["get_weather"])


def test_tool_choice_and_parallel_flag_reach_the_backend():
    text, call = FakeBackend(), FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    named = {"type": "function", "function": {"name": "get_weather"}}
    ok(post(chat(tools=[WEATHER], tool_choice="none", parallel_tool_calls=False), text))
    ok(post(chat(tools=[WEATHER], tool_choice=named), call))
    assert [(r.tools.choice, r.tools.parallel) for _, r in text.calls + call.calls] == [
        ("none", False),
        ("get_weather", True),
    ]


def test_a_call_under_tool_choice_none_is_never_a_200():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    error(post(chat(tools=[WEATHER], tool_choice="none"), backend), 502, code="output_invalid")


TOKEN_LOGPROBS = [
    {"token": "Hel", "logprob": math.log(0.9), "bytes": [72, 101, 108], "top_logprobs": []},
    {"token": "lo", "logprob": math.log(0.8), "bytes": [108, 111], "top_logprobs": []},
]


def test_logprobs_are_in_openais_shape():
    backend = FakeBackend(answer(token_logprobs=TOKEN_LOGPROBS), pieces=("Hel", "lo"))
    body = ok(post(chat(logprobs=True, top_logprobs=0), backend))
    content = body.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hel", "lo"]
    assert content[0].logprob == pytest.approx(math.log(0.9))
    ((_, request),) = backend.calls
    assert (request.logprobs, request.top_logprobs) == (True, 0)


def test_sampling_fields_reach_the_generation_request():
    backend = FakeBackend()
    fields = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 33,
        "stop": "END",
        "seed": 5,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"42": -100},
    }
    ok(post(chat(**fields), backend))
    r = backend.calls[0][1]
    assert (r.temperature, r.top_p, r.max_tokens, r.stop, r.seed) == (0.2, 0.9, 33, ["END"], 5)
    assert (r.presence_penalty, r.frequency_penalty, r.logit_bias) == (0.1, 0.2, {42: -100.0})


# --- streamed chunks -------------------------------------------------------------------------------------------


def test_a_text_stream_is_openai_chunks():
    backend = FakeBackend(answer("Hello"), pieces=("Hel", "lo"))
    got = chunks(post(chat(stream=True, stream_options={"include_usage": True}), backend))
    assert got[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Hello"
    assert got[-2].choices[0].finish_reason == "stop"
    assert got[-1].choices == [] and got[-1].usage.total_tokens == 9


def test_a_tool_call_stream_is_openai_chunks_with_tool_call_deltas():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    got = chunks(post(chat(tools=[WEATHER], tool_choice="required", stream=True), backend))
    deltas = [c.choices[0].delta.tool_calls for c in got if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1
    (call,) = deltas[0]
    assert (call.index, call.id, call.function.name) == (0, "call_abc", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert got[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in got)


def test_a_stream_with_logprobs_carries_them_per_chunk():
    backend = FakeBackend(answer(token_logprobs=TOKEN_LOGPROBS), pieces=())
    backend.stream = logprob_stream  # one delta per token, each with its logprob
    got = chunks(post(chat(stream=True, logprobs=True), backend))
    with_lp = [c for c in got if c.choices and c.choices[0].logprobs]
    assert [c.choices[0].logprobs.content[0].token for c in with_lp] == ["Hel", "lo"]


async def logprob_stream(model, request):
    for entry in TOKEN_LOGPROBS:
        yield StreamDelta(entry["token"], logprobs=[entry])
    yield answer(token_logprobs=TOKEN_LOGPROBS)


# --- the real openai client -------------------------------------------------------------------------------------


def openai_client(backend):
    http_client = TestClient(app(backend), raise_server_exceptions=False)
    return openai.OpenAI(base_url="http://test/v1", api_key="x", http_client=http_client, max_retries=0)


def test_openai_client_gets_parsed_tool_calls():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    completion = openai_client(backend).chat.completions.create(
        model="smol", messages=HELLO, tools=[WEATHER], tool_choice="required"
    )
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert completion.choices[0].finish_reason == "tool_calls"


def test_openai_client_accumulates_a_streamed_tool_call():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    client = openai_client(backend)
    with client.chat.completions.stream(
        model="smol", messages=HELLO, tools=[WEATHER], tool_choice="required"
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_abc",
        "get_weather",
        {"city": "Paris"},
    )


def test_openai_client_raw_stream_of_a_tool_call():
    backend = FakeBackend(answer("", tool_calls=[PARIS_CALL], finish_reason="tool_calls"))
    stream = openai_client(backend).chat.completions.create(
        model="smol", messages=HELLO, tools=[WEATHER], tool_choice="required", stream=True
    )
    calls = {}
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    assert calls == {0: {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


class Person(BaseModel):
    name: str
    age: int


def test_openai_client_parse_with_a_pydantic_response_format():
    backend = FakeBackend(answer('{"name": "Ada", "age": 36}'))
    completion = openai_client(backend).chat.completions.parse(model="smol", messages=HELLO, response_format=Person)
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    schema = backend.calls[0][1].contract.json_schema
    assert schema["required"] == ["name", "age"] and schema["additionalProperties"] is False


def test_openai_client_raises_typed_errors():
    client = openai_client(FakeBackend())
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smol", messages=HELLO, extra_body={"best_of": 2})
    assert caught.value.code == "unknown_parameter"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=HELLO)


class PausingBackend(FakeBackend):
    """Streams its pieces with a pause before the last one (a cut stream waiting for a new replica)."""

    async def stream(self, model, request):
        self.calls.append((model, request))
        for i, piece in enumerate(self.pieces):
            if i == len(self.pieces) - 1:
                await asyncio.sleep(0.3)
            yield StreamDelta(piece)
        yield self.result


def test_heartbeats_in_a_silent_stream_are_skipped_by_the_openai_client(monkeypatch):
    monkeypatch.setattr(api_module, "HEARTBEAT_S", 0.05)
    backend = PausingBackend(answer("Hello there"), pieces=("Hello", " there"))
    with TestClient(app(backend)) as http:
        raw = http.post("/v1/chat/completions", json={"model": "smol", "messages": HELLO, "stream": True}).text
        assert raw.count(": keep-alive\n\n") >= 3, raw  # sent during the pause
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        stream = client.chat.completions.create(model="smol", messages=HELLO, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello there"
