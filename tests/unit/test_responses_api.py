"""POST /v1/responses over a fake chat path: translation both ways, SSE events, errors.

Every body and every event is parsed with the ``openai`` package's own types, so a shape a real client
would reject fails here; the real ``openai`` client (and the Agents SDK, when installed) drive it too.
"""

import asyncio
import copy
import json

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsBase
from pydantic import TypeAdapter

from deployments.router.responses_api import HONOURED, NO_OPS, REFUSED, add_responses_routes

EVENT = TypeAdapter(ResponseStreamEvent)
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
SLMFLEET = {"model": "smol", "escalations": [], "cost": {"usd": 0.0001}}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def completion(content="Hello there.", tool_calls=None, finish_reason="stop", **extra):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "smol",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": USAGE,
        **extra,
    }


def tool_call(call_id="call_1", name="get_weather", arguments='{"city": "Paris"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chunk(delta=None, finish_reason=None):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "smol",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}],
    }


def text_chunks(*pieces, finish_reason="stop"):
    first = [chunk({"role": "assistant", "content": ""})]
    usage = {**chunk(), "choices": [], "usage": USAGE}
    return [*first, *(chunk({"content": p}) for p in pieces), chunk(finish_reason=finish_reason), usage]


class FakeChat:
    """Scripted chat answers (one per call, the last one repeating); records every chat body it is sent."""

    def __init__(self, *replies, streams=None, fail_with=None):
        self.replies = list(replies) or [(200, completion())]
        self.streams = streams or [text_chunks("Hel", "lo")]  # chunk lists, or (status, error body)
        self.fail_with = fail_with  # raised by the chunk iterator after its chunks
        self.bodies = []

    async def complete(self, body):
        self.bodies.append(copy.deepcopy(body))
        return self.replies[min(len(self.bodies), len(self.replies)) - 1]

    async def stream(self, body):
        self.bodies.append(copy.deepcopy(body))
        script = self.streams[min(len(self.bodies), len(self.streams)) - 1]
        if isinstance(script, tuple):
            return script
        return self._iterate(list(script))

    async def _iterate(self, chunks):
        for item in chunks:
            await asyncio.sleep(0)
            yield item
        if self.fail_with is not None:
            raise self.fail_with


def make_app(fake):
    app = FastAPI()
    add_responses_routes(app, fake.complete, fake.stream)
    return app


def post(fake, body, **kw):
    with TestClient(make_app(fake), raise_server_exceptions=False) as c:
        return c.post("/v1/responses", json=body, **kw)


def ok_response(resp):
    assert resp.status_code == 200, resp.text
    return Response.model_validate(resp.json())


def assert_error(resp, status, code=None, param=None, says=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert code is None or err["code"] == code
    assert param is None or err["param"] == param
    assert says is None or says in err["message"], err["message"]
    return err


def sse_events(resp):
    """Each SSE event validated as an openai ResponseStreamEvent; its event name must equal its type."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in resp.text
    events = []
    for block in resp.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(EVENT.validate_python(data))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


# --- the field decisions ---------------------------------------------------------------------------------


def test_every_create_param_is_honoured_ignored_or_refused_exactly_once():
    params = ResponseCreateParamsBase.__required_keys__ | ResponseCreateParamsBase.__optional_keys__
    sets = [set(HONOURED), set(NO_OPS), set(REFUSED)]
    for key in params:
        assert sum(key in s for s in sets) == 1, key
    assert not (set(HONOURED) & set(NO_OPS)) and not (set(HONOURED) & set(REFUSED)) and not (set(NO_OPS) & set(REFUSED))
    assert set().union(*sets) - params == {"stream"}  # stream lives on the streaming/non-streaming variants
    assert all(reason.strip() for s in (HONOURED, NO_OPS, REFUSED) for reason in s.values())


# --- plain requests ---------------------------------------------------------------------------------------


def test_text_answer_round_trip():
    fake = FakeChat((200, completion("Hello there.", slmfleet=SLMFLEET)))
    body = {
        "model": "smol",
        "input": "Say hello",
        "instructions": "Be brief.",
        "max_output_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "safety_identifier": "s-1",
        "metadata": {"ticket": "42"},
    }
    resp = post(fake, body)
    r = ok_response(resp)
    assert fake.bodies == [
        {
            "model": "smol",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
            "max_completion_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u-1",
            "safety_identifier": "s-1",
            "metadata": {"ticket": "42"},
        }
    ]
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed" and r.model == "smol"
    assert r.output_text == "Hello there."
    (item,) = r.output
    assert item.type == "message" and item.id.startswith("msg_") and item.status == "completed"
    assert item.role == "assistant" and item.content[0].type == "output_text" and item.content[0].annotations == []
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (11, 3, 14)
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    assert (r.instructions, r.max_output_tokens, r.temperature, r.top_p) == ("Be brief.", 64, 0.2, 0.9)
    assert r.metadata == {"ticket": "42"} and r.tool_choice == "auto" and r.tools == [] and r.parallel_tool_calls
    assert r.text.format.type == "text" and r.error is None and r.incomplete_details is None
    assert resp.json()["slmfleet"] == SLMFLEET


def test_input_items_become_chat_messages():
    fake = FakeChat()
    items = [
        {"role": "developer", "content": "Use tools."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather in"},
                {"type": "input_text", "text": "Paris and Rome?"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
            "status": "completed",
        },
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "21C"}]},
        {"role": "user", "content": "And Oslo?"},
        {"type": "function_call", "call_id": "call_c", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_c", "output": "2C"},
    ]
    ok_response(post(fake, {"model": "smol", "input": items, "tools": [WEATHER_TOOL]}))
    call = lambda cid, args: {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": args}}  # noqa: E731
    assert fake.bodies[0]["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in\nParis and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("call_a", '{"city":"Paris"}'), call("call_b", '{"city":"Rome"}')],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "21C"},
        {"role": "user", "content": "And Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_c", '{"city":"Oslo"}')]},
        {"role": "tool", "tool_call_id": "call_c", "content": "2C"},
    ]


def test_tools_tool_choice_and_text_format_translate_to_chat():
    fake = FakeChat()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    body = {
        "model": "smol",
        "input": "hi",
        "tools": [WEATHER_TOOL, {"type": "function", "name": "noop"}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {"format": fmt, "verbosity": "low"},
    }
    r = ok_response(post(fake, body))
    sent = fake.bodies[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "noop"}},
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert r.tools[0].name == "get_weather" and r.tool_choice.name == "get_weather" and not r.parallel_tool_calls
    assert r.text.format.type == "json_schema" and r.text.format.name == "answer" and r.text.verbosity == "low"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        ({"verbosity": "high"}, None),
    ],
)
def test_text_formats(text, expected):
    fake = FakeChat()
    ok_response(post(fake, {"model": "smol", "input": "hi", "text": text}))
    assert fake.bodies[0].get("response_format") == expected


@pytest.mark.parametrize("choice", ["none", "auto", "required"])
def test_tool_choice_modes_pass_through(choice):
    fake = FakeChat()
    r = ok_response(post(fake, {"model": "smol", "input": "hi", "tools": [WEATHER_TOOL], "tool_choice": choice}))
    assert fake.bodies[0]["tool_choice"] == choice and r.tool_choice == choice


def test_allowed_tools_narrows_the_tool_list():
    fake = FakeChat()
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "noop"}]}
    tools = [WEATHER_TOOL, {"type": "function", "name": "noop"}]
    r = ok_response(post(fake, {"model": "smol", "input": "hi", "tools": tools, "tool_choice": choice}))
    assert fake.bodies[0]["tools"] == [{"type": "function", "function": {"name": "noop"}}]
    assert fake.bodies[0]["tool_choice"] == "required" and r.tool_choice.type == "allowed_tools"


def test_tool_call_answer_becomes_function_call_items():
    calls = [tool_call("call_1"), tool_call("call_2", arguments='{"city": "Rome"}')]
    fake = FakeChat((200, completion(None, calls, "tool_calls")))
    r = ok_response(post(fake, {"model": "smol", "input": "weather?", "tools": [WEATHER_TOOL]}))
    assert r.status == "completed" and r.output_text == ""
    assert [(i.type, i.call_id, i.name, i.arguments, i.status) for i in r.output] == [
        ("function_call", "call_1", "get_weather", '{"city": "Paris"}', "completed"),
        ("function_call", "call_2", "get_weather", '{"city": "Rome"}', "completed"),
    ]
    assert all(i.id.startswith("fc_") for i in r.output)


def test_text_and_tool_call_in_one_answer():
    fake = FakeChat((200, completion("Let me check.", [tool_call()], "tool_calls")))
    r = ok_response(post(fake, {"model": "smol", "input": "weather?", "tools": [WEATHER_TOOL]}))
    assert [i.type for i in r.output] == ["message", "function_call"] and r.output_text == "Let me check."


def test_length_cut_is_incomplete_with_reason():
    fake = FakeChat((200, completion("Hello th", finish_reason="length")))
    r = ok_response(post(fake, {"model": "smol", "input": "hi", "max_output_tokens": 3}))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.completed_at is None


@pytest.mark.parametrize(
    "extra",
    [
        {"store": False},
        {"store": True},
        {"include": []},
        {"include": ["reasoning.encrypted_content"]},
        {"reasoning": {"effort": "low", "summary": "auto"}},
        {"truncation": "auto"},
        {"truncation": "disabled"},
        {"service_tier": "auto"},
        {"prompt_cache_key": "k"},
        {"prompt_cache_retention": "24h"},
        {"background": False},
        {"top_logprobs": 3},
        {"max_tool_calls": 2},
        {"stream_options": {"include_obfuscation": False}},
        {"previous_response_id": None, "conversation": None, "prompt": None},
    ],
)
def test_no_op_fields_are_accepted_and_not_forwarded(extra):
    fake = FakeChat()
    ok_response(post(fake, {"model": "smol", "input": "hi", **extra}))
    assert set(fake.bodies[0]) == {"model", "messages"}


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "code", "param", "says"),
    [
        ({"frobnicate": 1}, "unknown_parameter", "frobnicate", "frobnicate"),
        ({"stop": ["\n"]}, "unknown_parameter", "stop", "stop"),
        ({"previous_response_id": "resp_1"}, "unsupported_parameter", "previous_response_id", "whole conversation"),
        ({"conversation": "conv_1"}, "unsupported_parameter", "conversation", "whole conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "unsupported_parameter", "prompt", "prompt"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "unsupported_parameter", "moderation", "moderation"),
        ({"background": True}, "unsupported_value", "background", "background"),
        ({"include": ["message.output_text.logprobs"]}, "unsupported_value", "include", "logprobs"),
        ({"tools": [{"type": "web_search"}]}, "unsupported_value", "tools[0].type", "web_search"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "unsupported_value", "tools[0].type", "mcp"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}},
            "invalid_value",
            "tool_choice.name",
            "nope",
        ),
        ({"tool_choice": {"type": "file_search"}}, "unsupported_value", "tool_choice", "file_search"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "invalid_request", None, "schema"),
        ({"max_output_tokens": 0}, "invalid_request", "max_output_tokens", None),
        ({"temperature": 3}, "invalid_request", "temperature", None),
    ],
)
def test_refused_fields_and_values_are_400s_naming_them(extra, code, param, says):
    fake = FakeChat()
    assert_error(post(fake, {"model": "smol", "input": "hi", **extra}), 400, code, param, says)
    assert fake.bodies == []


@pytest.mark.parametrize(
    ("item", "param", "says"),
    [
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]},
            "input[0].content[0].type",
            "input_image",
        ),
        (
            {"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]},
            "input[0].content[0].type",
            "input_file",
        ),
        ({"type": "item_reference", "id": "msg_1"}, "input[0].type", "item_reference"),
        ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "input[0].type", "web_search_call"),
        (
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "x"}]},
            "input[0].output[0].type",
            "input_image",
        ),
        ({"type": "function_call_output", "output": "x"}, "input[0].call_id", "call_id"),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}},
            "input[0].arguments",
            "JSON string",
        ),
        ({"role": "tool", "content": "x"}, "input[0].role", "role"),
    ],
)
def test_unservable_input_items_are_400s_naming_them(item, param, says):
    fake = FakeChat()
    assert_error(post(fake, {"model": "smol", "input": [item]}), 400, None, param, says)
    assert fake.bodies == []


def test_malformed_bodies():
    fake = FakeChat()
    with TestClient(make_app(fake), raise_server_exceptions=False) as c:
        bad_json = c.post("/v1/responses", content=b"{nope", headers={"content-type": "application/json"})
        assert_error(bad_json, 400, "invalid_json")
        assert_error(c.post("/v1/responses", json=["x"]), 400, "invalid_request")
        assert_error(c.post("/v1/responses", json={"input": "hi"}), 400, "invalid_request", "model")
        assert_error(c.post("/v1/responses", json={"model": "smol"}), 400, "invalid_request", "input")
        assert_error(c.post("/v1/responses", json={"model": "smol", "input": []}), 400, "invalid_request", "input")
    assert fake.bodies == []


# --- chat errors ------------------------------------------------------------------------------------------


def chat_error_body(message, err_type, code):
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "retry"),
    [(404, None), (400, None), (429, "2"), (503, "2"), (504, None)],
)
def test_chat_errors_pass_through_with_retry_after(status, retry):
    error = chat_error_body("nope", "invalid_request_error" if status < 500 else "server_error", "x")
    for stream in (False, True):
        fake = FakeChat((status, error), streams=[(status, error)])
        resp = post(fake, {"model": "smol", "input": "hi", "stream": stream})
        assert resp.status_code == status and resp.json() == error
        assert resp.headers.get("retry-after") == retry


# --- streaming --------------------------------------------------------------------------------------------


def test_stream_of_text():
    fake = FakeChat(streams=[text_chunks("Hel", "lo", "!")])
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "instructions": "Be brief.", "stream": True}))
    assert fake.bodies[0]["stream"] is True and fake.bodies[0]["stream_options"] == {"include_usage": True}
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello!"
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events[3:9]) and events[7].text == "Hello!"
    assert events[9].item.status == "completed" and events[9].item.content[0].text == "Hello!"
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "Hello!" and done.usage.total_tokens == 14
    assert done.id == events[0].response.id and done.instructions == "Be brief."


def test_stream_of_tool_calls_split_across_chunks():
    def call_delta(index, **fields):
        return chunk({"tool_calls": [{"index": index, **fields}]})

    chunks = [
        chunk({"role": "assistant", "content": "Checking."}),
        call_delta(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
        call_delta(0, function={"arguments": '{"city": '}),
        call_delta(0, function={"arguments": '"Paris"}'}),
        call_delta(1, id="call_b", type="function", function={"name": "get_weather", "arguments": '{"city": "Rome"}'}),
        chunk(finish_reason="tool_calls"),
        {**chunk(), "choices": [], "usage": USAGE},
    ]
    fake = FakeChat(streams=[chunks])
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "tools": [WEATHER_TOOL], "stream": True}))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds.count("response.function_call_arguments.delta") == 3 and kinds[-1] == "response.completed"
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [
        (0, "message"),
        (1, "function_call"),
        (2, "function_call"),
    ]
    assert added[1].item.arguments == "" and added[1].item.call_id == "call_a" and added[1].item.status == "in_progress"
    args_done = {e.item_id: e.arguments for e in events if e.type == "response.function_call_arguments.done"}
    assert args_done == {added[1].item.id: '{"city": "Paris"}', added[2].item.id: '{"city": "Rome"}'}
    # the message closes before the first call starts
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    final = events[-1].response
    assert [(i.type, getattr(i, "call_id", None), i.status) for i in final.output] == [
        ("message", None, "completed"),
        ("function_call", "call_a", "completed"),
        ("function_call", "call_b", "completed"),
    ]


def test_stream_cut_by_length_is_incomplete():
    fake = FakeChat(streams=[text_chunks("Hel", finish_reason="length")])
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "stream": True, "max_output_tokens": 1}))
    assert events[-1].type == "response.incomplete"
    r = events[-1].response
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete"
    assert next(e for e in events if e.type == "response.output_item.done").item.status == "incomplete"


def test_stream_error_mid_stream_is_an_error_event_then_failed():
    chunks = [
        chunk({"content": "Hel"}),
        {"error": {"message": "engine died", "type": "server_error", "param": None, "code": "engine_dead"}},
    ]
    fake = FakeChat(streams=[chunks])
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "stream": True}))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "engine_dead" and events[-2].message == "engine died"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error" and failed.error.message == "engine died"
    assert failed.output[0].status == "incomplete" and failed.output_text == "Hel"
    assert "response.completed" not in [e.type for e in events]


def test_stream_that_raises_ends_as_failed():
    fake = FakeChat(streams=[[chunk({"content": "Hel"})]], fail_with=RuntimeError("boom"))
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "stream": True}))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"] and events[-2].code == "internal"


def test_stream_carries_slmfleet_from_chunks():
    final = {**chunk(finish_reason="stop"), "slmfleet": SLMFLEET}
    fake = FakeChat(streams=[[chunk({"content": "Hi"}), final]])
    events = sse_events(post(fake, {"model": "smol", "input": "hi", "stream": True}))
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is None
    assert completed.response.model_extra["slmfleet"] == SLMFLEET


# --- the real openai client -------------------------------------------------------------------------------


def openai_client(fake):
    transport = httpx.ASGITransport(app=make_app(fake))
    http_client = httpx.AsyncClient(transport=transport, base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http_client, max_retries=0)


def test_openai_client_plain_and_streamed():
    async def run():
        fake = FakeChat((200, completion("Hello there.")), streams=[text_chunks("Hel", "lo")])
        client = openai_client(fake)
        plain = await client.responses.create(model="smol", input="hi", instructions="Be brief.")
        stream = await client.responses.create(model="smol", input="hi", stream=True)
        events = [event async for event in stream]
        return plain, events

    plain, events = asyncio.run(run())
    assert plain.output_text == "Hello there." and plain.status == "completed"
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hello"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello"


def test_openai_client_sees_a_mid_stream_failure_as_events():
    async def run():
        error = {"error": {"message": "engine died", "type": "server_error", "param": None, "code": "engine_dead"}}
        client = openai_client(FakeChat(streams=[[chunk({"content": "Hel"}), error]]))
        stream = await client.responses.create(model="smol", input="hi", stream=True)
        return [event async for event in stream]

    events = asyncio.run(run())
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.message == "engine died"


def test_openai_client_error_raises_typed_exception():
    async def run():
        error = chat_error_body("model 'x' does not exist", "invalid_request_error", "model_not_found")
        client = openai_client(FakeChat((404, error)))
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="x", input="hi")
        return caught.value

    assert asyncio.run(run()).code == "model_not_found"


def test_openai_client_function_call_then_its_output():
    async def run():
        fake = FakeChat(
            (200, completion(None, [tool_call("call_9")], "tool_calls")),
            (200, completion("It is 18C in Paris.")),
        )
        client = openai_client(fake)
        user = {"role": "user", "content": "Weather in Paris?"}
        first = await client.responses.create(model="smol", input=[user], tools=[WEATHER_TOOL], tool_choice="auto")
        call = first.output[0]
        follow_up = [user, call, {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}]
        second = await client.responses.create(model="smol", input=follow_up, tools=[WEATHER_TOOL])
        return fake, first, second

    fake, first, second = asyncio.run(run())
    call = first.output[0]
    assert (call.type, call.call_id, call.name, json.loads(call.arguments)) == (
        "function_call",
        "call_9",
        "get_weather",
        {"city": "Paris"},
    )
    assert fake.bodies[1]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("call_9")]},
        {"role": "tool", "tool_call_id": "call_9", "content": "18C"},
    ]
    assert second.output_text == "It is 18C in Paris."


def tool_call_chunks(call_id, arguments):
    return [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
        chunk(finish_reason="tool_calls"),
        {**chunk(), "choices": [], "usage": USAGE},
    ]


@pytest.mark.parametrize("streamed", [False, True])
def test_agents_sdk_runs_a_tool_loop_over_the_route(streamed):
    """What the Agents SDK really sends (include, tools, instructions, items) is accepted, plain and streamed."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"18C in {city}"

    fake = FakeChat(
        (200, completion(None, [tool_call("call_7", arguments='{"city": "Paris"}')], "tool_calls")),
        (200, completion("It is 18C in Paris.")),
        streams=[tool_call_chunks("call_7", '{"city": "Paris"}'), text_chunks("It is 18C ", "in Paris.")],
    )

    async def run():
        model = agents.OpenAIResponsesModel(model="smol", openai_client=openai_client(fake))
        agent = agents.Agent(name="w", instructions="Answer briefly.", model=model, tools=[get_weather])
        if not streamed:
            return (await agents.Runner.run(agent, "Weather in Paris?")).final_output
        result = agents.Runner.run_streamed(agent, "Weather in Paris?")
        async for _ in result.stream_events():
            pass
        return result.final_output

    assert asyncio.run(run()) == "It is 18C in Paris."
    first, second = fake.bodies
    assert first["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert first["tools"][0]["function"]["name"] == "get_weather" and first.get("stream", False) is streamed
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_7"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_7", "content": "18C in Paris"}
