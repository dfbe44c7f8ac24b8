"""Tool calls on the model side: the xgrammar structural tag, the parsers, the prompt rendering, the engine call.

The grammar is compiled with the real xgrammar and checked string by string, so "valid by construction" is
tested against the matcher vLLM uses, not against a description of it.
"""

import json
from pathlib import Path

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from cluster.spec import load_spec
from deployments.model.chat_request import build_engine_call
from deployments.model.json_budget import SchemaBudgetError
from deployments.model.tool_calls import ToolCallStream, split_tool_calls, structural_tag, text_format
from deployments.model.tool_prompt import TOOLS_HEADER, render_plain, template_supports_tools
from deployments.protocol import Contract, GenerationRequest, ToolCall, ToolDef, Tools

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "fleet.yaml")

WEATHER = ToolDef(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolDef("get_time", "Time in a zone", {"type": "object", "properties": {"tz": {"type": "string"}}})
TOOLS = (WEATHER, TIME)


def call_text(name, arguments):
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


WEATHER_CALL = call_text("get_weather", '{"city": "Paris"}')
TIME_CALL = call_text("get_time", '{"tz": "UTC"}')


def grammar(choice="auto", parallel=True, text=None, max_tokens=256):
    tag = structural_tag(Tools(TOOLS, choice, parallel), max_tokens, text)
    return xgrammar.Grammar.from_structural_tag(json.dumps(tag))


def accepts(compiled, text):
    return _is_grammar_accept_string(compiled, text)


# --- the structural tag --------------------------------------------------------------------------------------


def test_required_accepts_one_call_and_parallel_calls():
    compiled = grammar("required")
    assert accepts(compiled, WEATHER_CALL)
    assert accepts(compiled, WEATHER_CALL + "\n" + TIME_CALL)


def test_required_rejects_plain_text():
    assert not accepts(grammar("required"), "It is sunny in Paris.")


def test_required_rejects_a_call_to_an_unknown_tool():
    assert not accepts(grammar("required"), call_text("get_stock", '{"city": "Paris"}'))


@pytest.mark.parametrize(
    "arguments",
    ['{"city": 5}', "{}", '{"city": "Paris", "country": "FR"}'],
    ids=["wrong-type", "missing-required", "unknown-key"],
)
def test_required_rejects_arguments_that_break_the_schema(arguments):
    assert not accepts(grammar("required"), call_text("get_weather", arguments))


def test_named_choice_accepts_only_that_tool():
    compiled = grammar("get_time")
    assert accepts(compiled, TIME_CALL)
    assert not accepts(compiled, WEATHER_CALL)
    assert not accepts(compiled, "The time is noon.")


def test_auto_accepts_plain_text_or_calls():
    compiled = grammar("auto")
    assert accepts(compiled, "It is sunny in Paris.")
    assert accepts(compiled, WEATHER_CALL)
    assert accepts(compiled, WEATHER_CALL + "\n" + TIME_CALL)


def test_auto_text_may_not_contain_a_call_tag():
    assert not accepts(grammar("auto"), "Sure. <tool_call> whatever I like")


def test_auto_rejects_text_then_call():
    assert not accepts(grammar("auto"), "Let me look that up.\n" + WEATHER_CALL)


def test_parallel_false_allows_exactly_one_call():
    compiled = grammar("required", parallel=False)
    assert accepts(compiled, WEATHER_CALL)
    assert not accepts(compiled, WEATHER_CALL + "\n" + TIME_CALL)


def test_auto_with_a_json_contract_accepts_the_json_or_a_call_but_not_free_text():
    contract = Contract(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    compiled = grammar("auto", text=text_format(contract, 256))
    assert accepts(compiled, '{"a": 1}')
    assert accepts(compiled, WEATHER_CALL)
    assert not accepts(compiled, "free text")
    assert not accepts(compiled, '{"a": "one"}')


def test_auto_with_a_choice_contract_accepts_only_the_choices_or_a_call():
    compiled = grammar("auto", text=text_format(Contract(choice=("yes", "no")), 256))
    assert accepts(compiled, "yes")
    assert accepts(compiled, WEATHER_CALL)
    assert not accepts(compiled, "maybe")


def test_call_arguments_are_bounded_by_the_token_budget():
    """A string argument without maxLength gets one, so a call cannot run on past max_tokens."""
    tag = structural_tag(Tools((WEATHER,), "required"), 64, None)
    limit = tag["format"]["tags"][0]["content"]["json_schema"]["properties"]["city"]["maxLength"]
    assert 0 < limit < 64 * 4
    compiled = xgrammar.Grammar.from_structural_tag(json.dumps(tag))
    assert accepts(compiled, call_text("get_weather", json.dumps({"city": "x" * limit})))
    assert not accepts(compiled, call_text("get_weather", json.dumps({"city": "x" * (limit + 1)})))


def test_a_smaller_budget_gives_smaller_argument_bounds():
    def limit(max_tokens):
        tag = structural_tag(Tools((WEATHER,), "required"), max_tokens, None)
        return tag["format"]["tags"][0]["content"]["json_schema"]["properties"]["city"]["maxLength"]

    assert limit(64) < limit(256)


# --- split_tool_calls ----------------------------------------------------------------------------------------


def test_split_parses_calls_with_compact_arguments_and_unique_ids():
    text, calls = split_tool_calls(WEATHER_CALL + "\n" + TIME_CALL)
    assert text == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Paris"}'), ("get_time", '{"tz":"UTC"}')]
    assert all(c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2


def test_split_keeps_text_outside_calls():
    text, calls = split_tool_calls("Let me check. " + WEATHER_CALL + " Back soon.")
    assert text == "Let me check.  Back soon."
    assert [c.name for c in calls] == ["get_weather"]


def test_split_drops_an_unfinished_trailing_call():
    cut = call_text("get_time", '{"tz": "UT')[: -len("}\n</tool_call>")]
    text, calls = split_tool_calls(WEATHER_CALL + "\n" + cut)
    assert text == ""
    assert [c.name for c in calls] == ["get_weather"]


def test_split_of_plain_text_returns_it_unchanged():
    assert split_tool_calls("a < b, and <tool is not a call") == ("a < b, and <tool is not a call", [])


def test_split_of_only_an_unfinished_call_is_empty():
    assert split_tool_calls("Hi " + WEATHER_CALL[:30]) == ("Hi ", [])


# --- ToolCallStream ------------------------------------------------------------------------------------------


def streamed(pieces):
    """(joined text, [(name, arguments)]) of feeding ``pieces`` to a ToolCallStream and flushing it."""
    stream, text, calls = ToolCallStream(), [], []
    for piece in pieces:
        for item in stream.feed(piece):
            (calls if isinstance(item, ToolCall) else text).append(item)
    text.append(stream.flush())
    assert stream.calls == calls
    return "".join(text), [(c.name, c.arguments) for c in calls]


def split_pairs(full):
    text, calls = split_tool_calls(full)
    return text, [(c.name, c.arguments) for c in calls]


def every_split(full):
    return [(full[:i], full[i:]) for i in range(len(full) + 1)]


TEXT_AND_TWO_CALLS = "Let me check. " + WEATHER_CALL + "\n" + TIME_CALL


@pytest.mark.parametrize("full", [TEXT_AND_TWO_CALLS, "Plain a < b text, <tool_c at the end", WEATHER_CALL])
def test_stream_gives_the_same_calls_at_every_split_point(full):
    _, expected_calls = split_pairs(full)
    for pieces in every_split(full):
        assert streamed(pieces)[1] == expected_calls, pieces


def test_parallel_calls_stream_no_text_at_any_split_point():
    """What the grammar produces under required: calls joined by "\\n" and nothing else."""
    full = WEATHER_CALL + "\n" + TIME_CALL
    assert split_pairs(full)[0] == ""
    leaked = {pieces: streamed(pieces)[0] for pieces in every_split(full)}
    assert {text for text in leaked.values()} == {""}, {p: t for p, t in leaked.items() if t}


def test_parallel_calls_in_one_delta_give_no_text():
    """Separator and closing tag in the same delta: the "\\n" is dropped (the case that works)."""
    full = WEATHER_CALL + "\n" + TIME_CALL
    assert streamed([full])[0] == ""


def test_stream_equals_split_exactly_at_every_split_point():
    expected = split_pairs(TEXT_AND_TWO_CALLS)
    for pieces in every_split(TEXT_AND_TWO_CALLS):
        assert streamed(pieces) == expected, pieces


def test_plain_text_streams_exactly_at_every_split_point():
    full = "Plain a < b text, <tool_c at the end"
    for pieces in every_split(full):
        assert streamed(pieces) == (full, []), pieces


def test_stream_releases_a_trailing_partial_tag_on_flush():
    stream = ToolCallStream()
    assert list(stream.feed("I will use a <tool")) == ["I will use a "]
    assert stream.flush() == "<tool"


def test_stream_never_holds_back_text_that_cannot_start_a_tag():
    stream = ToolCallStream()
    assert list(stream.feed("Hello")) == ["Hello"]
    assert list(stream.feed(", a > b")) == [", a > b"]
    assert list(stream.feed(" <")) == [" "]  # "<" might open a tag
    assert list(stream.feed("b")) == ["<b"]  # now it cannot
    assert stream.flush() == ""


def test_stream_emits_a_call_once_its_closing_tag_arrives():
    stream = ToolCallStream()
    assert list(stream.feed(WEATHER_CALL[:-1])) == []
    (call,) = stream.feed(WEATHER_CALL[-1])
    assert (call.name, call.arguments) == ("get_weather", '{"city":"Paris"}')


def test_stream_drops_an_unfinished_call_on_flush():
    stream = ToolCallStream()
    assert list(stream.feed(WEATHER_CALL[:40])) == []
    assert stream.flush() == ""


# --- tool_prompt ---------------------------------------------------------------------------------------------

HISTORY_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


def test_tools_are_listed_in_a_new_system_prompt():
    (system, user) = render_plain([{"role": "user", "content": "Weather?"}], TOOLS)
    assert system["role"] == "system" and system["content"].startswith(TOOLS_HEADER)
    lines = system["content"].split("<tools>\n", 1)[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line) for line in lines] == [
        {"name": t.name, "description": t.description, "parameters": t.parameters} for t in TOOLS
    ]
    assert user == {"role": "user", "content": "Weather?"}


def test_tools_section_is_merged_into_an_existing_system_message():
    rendered = render_plain([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}], TOOLS)
    assert [m["role"] for m in rendered] == ["system", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\n" + TOOLS_HEADER)


def test_tool_history_is_rendered_as_call_and_response_blocks_in_order():
    messages = [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [HISTORY_CALL, {**HISTORY_CALL, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "19C"},
        {"role": "assistant", "content": "It is 18C."},
    ]
    rendered = render_plain(messages, ())
    assert [m["role"] for m in rendered] == ["user", "assistant", "user", "user", "assistant"]
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert rendered[1]["content"] == f"Checking.\n{block}\n{block}"
    assert rendered[2]["content"] == "<tool_response>\n18C\n</tool_response>"
    assert rendered[3]["content"] == "<tool_response>\n19C\n</tool_response>"
    assert rendered[4] == {"role": "assistant", "content": "It is 18C."}


def test_a_call_without_content_renders_only_the_block():
    rendered = render_plain([{"role": "assistant", "content": None, "tool_calls": [HISTORY_CALL]}], ())
    body = rendered[0]["content"].removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
    assert json.loads(body) == {"name": "get_weather", "arguments": {"city": "Paris"}}  # an object, not a string


def test_arguments_that_are_not_json_are_shown_as_sent():
    bad = {**HISTORY_CALL, "function": {"name": "get_weather", "arguments": "city=Paris"}}
    body = render_plain([{"role": "assistant", "tool_calls": [bad]}], ())[0]["content"]
    assert json.loads(body.split("\n")[1]) == {"name": "get_weather", "arguments": "city=Paris"}


@pytest.mark.parametrize(
    ("template", "supported"),
    [
        (None, False),
        ("", False),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", False),
        ("{% if tools %}{{ tools | tojson }}{% endif %}", True),
    ],
)
def test_template_supports_tools(template, supported):
    assert template_supports_tools(template) is supported


# --- build_engine_call ---------------------------------------------------------------------------------------


def request(**fields):
    return GenerationRequest(request_id="r1", messages=[{"role": "user", "content": "hi"}], **fields)


def test_tool_choice_none_shows_no_tools_and_no_tag():
    call = build_engine_call(request(tools=Tools(TOOLS, "none")), None)
    assert call.tools == ()
    assert call.structured is None


def test_tool_choice_none_keeps_the_text_contract():
    call = build_engine_call(request(tools=Tools(TOOLS, "none"), contract=Contract(choice=("a", "b"))), None)
    assert call.structured == {"choice": ["a", "b"]}


@pytest.mark.parametrize(("choice", "offered"), [("auto", TOOLS), ("required", TOOLS), ("get_time", (TIME,))])
def test_tools_become_a_structural_tag_and_the_offered_tools(choice, offered):
    call = build_engine_call(request(tools=Tools(TOOLS, choice), max_tokens=100), None)
    assert set(call.structured) == {"structural_tag"}
    tag = json.loads(call.structured["structural_tag"])
    assert tag == structural_tag(Tools(TOOLS, choice), 100, None)
    assert call.tools == offered
    xgrammar.Grammar.from_structural_tag(call.structured["structural_tag"])  # compiles


def test_tools_with_a_contract_put_the_contract_in_the_tag():
    contract = Contract(choice=("yes", "no"))
    call = build_engine_call(request(tools=Tools(TOOLS), contract=contract, max_tokens=100), None)
    tag = json.loads(call.structured["structural_tag"])
    assert tag["format"]["elements"][1] == text_format(contract, 100)


def test_sampling_carries_only_what_was_set():
    call = build_engine_call(request(), None)
    assert set(call.sampling) == {"temperature", "top_p", "max_tokens"}


def test_sampling_carries_every_field_that_was_set():
    call = build_engine_call(
        request(
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={42: -100.0},
            extra_sampling={"top_k": 5, "min_p": 0.1},
            logprobs=True,
            top_logprobs=3,
            stop=["END"],
            temperature=0.3,
        ),
        None,
    )
    assert call.sampling["temperature"] == 0.3
    assert {k: call.sampling[k] for k in call.sampling if k not in ("temperature", "top_p", "max_tokens")} == {
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {42: -100.0},
        "top_k": 5,
        "min_p": 0.1,
        "logprobs": 3,
        "stop": ["END"],
    }


def test_logprobs_without_top_logprobs_asks_for_the_sampled_token_only():
    assert build_engine_call(request(logprobs=True), None).sampling["logprobs"] == 0


def test_request_overrides_the_specialist_defaults():
    summarize = SPEC.specialists["summarize"]
    assert build_engine_call(request(), summarize).sampling["max_tokens"] == summarize.sampling.max_tokens
    assert build_engine_call(request(max_tokens=20), summarize).sampling["max_tokens"] == 20


def test_a_json_schema_contract_is_fitted_to_max_tokens():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

    def fitted(max_tokens):
        call = build_engine_call(request(contract=Contract(json_schema=schema), max_tokens=max_tokens), None)
        return call.structured["json"]["properties"]["name"]["maxLength"]

    assert 0 < fitted(50) < fitted(500)
    assert "maxLength" not in schema["properties"]["name"]  # the request's own schema is left alone


def test_the_specialist_contract_and_instructions_apply():
    extract = SPEC.specialists["extract"]
    call = build_engine_call(request(), extract)
    assert call.messages[0] == {"role": "system", "content": extract.instructions}
    assert call.structured["json"]["required"] == ["name", "city", "age"]


def test_a_developer_message_is_the_system_prompt():
    summarize = SPEC.specialists["summarize"]
    messages = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    call = build_engine_call(GenerationRequest(request_id="r1", messages=messages), summarize)
    assert [m["role"] for m in call.messages] == ["system", "user"]
    assert call.messages[0]["content"] == f"{summarize.instructions}\n\nAnswer in French."


def test_a_retry_keeps_the_first_calls_schema_bound():
    schema = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    first = build_engine_call(
        GenerationRequest("r", [{"role": "user", "content": "x"}], contract=Contract(schema), max_tokens=40), None
    )
    retry = build_engine_call(
        GenerationRequest(
            "r", [{"role": "user", "content": "x"}], contract=Contract(schema), max_tokens=80, schema_tokens=40
        ),
        None,
    )
    assert retry.sampling["max_tokens"] == 80
    assert retry.structured == first.structured  # the bound did not grow with the retry's room


def test_a_tool_too_big_for_the_budget_is_left_out_and_none_fitting_names_the_clients_max_tokens():
    small = ToolDef("ping", "", {"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]})
    big = ToolDef(
        "book",
        "",
        {
            "type": "object",
            "properties": {f"field_{i}": {"type": "integer"} for i in range(12)},
            "required": [f"field_{i}" for i in range(12)],
        },
    )
    tag = structural_tag(Tools((small, big), "required"), 40, None)
    begins = [t["begin"] for t in tag["format"]["tags"]]
    assert len(begins) == 1 and '"ping"' in begins[0]
    with pytest.raises(SchemaBudgetError, match=r"max_tokens 40 is too small for a call to book") as caught:
        structural_tag(Tools((big,), "required"), 40, None)
    assert caught.value.needed > 40
