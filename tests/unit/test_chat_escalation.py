"""Chat calls judged like one-step pipelines: contract, availability and confidence failures retried, escalated
or answered as errors, over a scripted fake backend (no engine, no Ray).

Specs are fleet.yaml with every escalation policy removed, then the one under test added, so a test says exactly
which policy it exercises.
"""

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cluster.spec import parse_spec
from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import GenerationError, GenerationResult, StreamDelta, ToolCall
from deployments.router.api import build_api

ROOT = Path(__file__).resolve().parents[2]
FLEET = yaml.safe_load((ROOT / "fleet.yaml").read_text())
HELLO = [{"role": "user", "content": "hi"}]
TOKENS_IN, TOKENS_OUT = 7, 2
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def spec(models=None, specialists=None, pipeline_escalation=None):
    """fleet.yaml without escalation policies, plus ``{name: policy}`` for models and specialists."""
    data = copy.deepcopy(FLEET)
    for section, policies in (("models", models or {}), ("specialists", specialists or {})):
        for name, entry in data[section].items():
            entry.pop("escalation", None)
            if name in policies:
                entry["escalation"] = policies[name]
    data["pipelines"]["support-triage"].pop("escalation", None)
    if pipeline_escalation is not None:
        data["pipelines"]["support-triage"]["escalation"] = pipeline_escalation
    return parse_spec(data)


def result(model, text="", **fields):
    fields = {"finish_reason": "stop", "prompt_tokens": TOKENS_IN, "completion_tokens": TOKENS_OUT, **fields}
    return GenerationResult(model=model, text=text, **fields)


def dead(model):
    return GenerationResult(model=model, error=GenerationError("engine_dead", "the engine died"))


def calls_of(model, *calls):
    return result(model, tool_calls=list(calls), finish_reason="tool_calls")


class ScriptedBackend:
    """Answers per model from a script, in order (the last answer repeats); records every (model, request).

    An answer is text (finish "stop") or a GenerationResult, whose ``model`` is set to the model asked.
    """

    def __init__(self, cold=(), down=(), **script):
        self.cold, self.down, self.woken = set(cold), set(down), []
        self.script = {
            model: list(answers) if isinstance(answers, list) else [answers] for model, answers in script.items()
        }
        self.calls = []

    def _next(self, model, request):
        self.calls.append((model, request))
        answers = self.script[model]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, str):
            return result(model, answer)
        return GenerationResult(**{**answer.__dict__, "model": model})

    async def complete(self, model, request):
        return self._next(model, request)

    async def stream(self, model, request):
        answer = self._next(model, request)
        if answer.error is None:
            yield StreamDelta(answer.text)
        yield answer

    async def health(self):
        return {"smol": {"state": "ready"}, "big": {"state": "ready"}}

    async def unready(self, model):
        if model in self.down:
            return GenerationError("engine_dead", f"model '{model}' has no running replica: 0 of 1 replicas running")
        if model in self.cold:
            self.woken.append(model)
            return GenerationError("cold_start", f"model '{model}' is scaled to zero and waking")
        return None

    def models(self):
        return [model for model, _ in self.calls]


def post(fleet, backend, body, pipelines=False):
    runner = PipelineRunner(fleet, backend.complete, ToolRegistry.from_spec(fleet)) if pipelines else None
    with TestClient(build_api(fleet, backend, runner=runner), raise_server_exceptions=False) as c:
        return c.post("/v1/chat/completions", json={"messages": HELLO, **body})


def ok(resp):
    assert resp.status_code == 200, resp.text
    ChatCompletion.model_validate(resp.json())
    return resp.json()


def error(resp, status, code=None, says=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) - {"retry_after"} == {"message", "type", "param", "code"} and err["message"]
    assert code is None or err["code"] == code, err
    assert says is None or says in err["message"], err["message"]
    if status in (429, 503):
        assert resp.headers["Retry-After"].isdigit()
        assert str(err.get("retry_after", resp.headers["Retry-After"])) == resp.headers["Retry-After"]
    return err


def sse(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks


def price(model):
    return FLEET["models"][model]["price_per_1k_tokens"] * (TOKENS_IN + TOKENS_OUT) / 1000


TO_BIG = {"to": "big"}


# --- contract ------------------------------------------------------------------------------------------------


def test_a_broken_contract_is_re_run_on_the_llm_and_says_so():
    backend = ScriptedBackend(smol="banana", big="refund")
    body = ok(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent"}))
    assert body["choices"][0]["message"]["content"] == "refund"
    report = body["slmfleet"]
    assert report["served_by"] == "big"
    (escalation,) = report["escalations"]
    assert (escalation["from_model"], escalation["to_model"], escalation["reason"]) == ("smol", "big", "contract")
    assert "banana" in escalation["detail"]
    assert [(a["model"], a["action"]) for a in report["attempts"]] == [("smol", "escalate"), ("big", "accept")]
    assert report["cost"]["total"] == pytest.approx(price("smol") + price("big"))
    assert report["cost"]["llm_model"] == "big"
    assert [r.specialist for _, r in backend.calls] == ["intent", "intent"]  # big answers as the specialist


def test_a_valid_answer_is_not_escalated():
    backend = ScriptedBackend(smol="refund", big="other")
    body = ok(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent"}))
    assert body["slmfleet"]["served_by"] == "smol" and body["slmfleet"]["escalations"] == []
    assert backend.models() == ["smol"]


def test_a_broken_contract_without_a_policy_is_a_502_never_a_200():
    backend = ScriptedBackend(smol="banana")
    error(post(spec(), backend, {"model": "intent"}), 502, "output_invalid", says="banana")


def test_the_llm_failing_too_is_an_error_naming_the_contract():
    backend = ScriptedBackend(smol="banana", big="cherry")
    error(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent"}), 502, "output_invalid", "cherry")
    assert backend.models() == ["smol", "big"]


# --- unavailable ---------------------------------------------------------------------------------------------


def test_an_unavailable_model_escalates():
    backend = ScriptedBackend(smol=dead("smol"), big="refund")
    body = ok(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent"}))
    assert body["slmfleet"]["served_by"] == "big"
    assert body["slmfleet"]["escalations"][0]["reason"] == "unavailable"


def test_unavailable_outside_the_reasons_is_a_503_with_retry_after():
    backend = ScriptedBackend(smol=dead("smol"), big="refund")
    policy = {"to": "big", "reasons": ["contract"]}
    error(post(spec(specialists={"intent": policy}), backend, {"model": "intent"}), 503, "engine_dead")
    assert backend.models() == ["smol"]


def test_a_bad_request_is_never_escalated():
    bad = GenerationResult(model="smol", error=GenerationError("context_length_exceeded", "too long"))
    backend = ScriptedBackend(smol=bad, big="refund")
    error(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent"}), 400, "context_length_exceeded")
    assert backend.models() == ["smol"]


# --- low confidence ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "served_by"), [(0.5, "big"), (0.95, "smol")])
def test_low_confidence_escalates_below_min_confidence(confidence, served_by):
    backend = ScriptedBackend(smol=result("smol", "refund", mean_logprob=math.log(confidence)), big="refund")
    policy = {"to": "big", "min_confidence": 0.9}
    body = ok(post(spec(specialists={"intent": policy}), backend, {"model": "intent"}))
    assert body["slmfleet"]["served_by"] == served_by
    reasons = [e["reason"] for e in body["slmfleet"]["escalations"]]
    assert reasons == (["low_confidence"] if served_by == "big" else [])


# --- tool calls ----------------------------------------------------------------------------------------------

BAD_ARGS = ToolCall("call_1", "get_weather", '{"city": 5}')
GOOD_ARGS = ToolCall("call_2", "get_weather", '{"city":"Paris"}')
TOOL_BODY = {"model": "smol", "tools": [WEATHER]}


def test_a_tool_call_breaking_its_schema_escalates_with_reason_contract():
    backend = ScriptedBackend(smol=calls_of("smol", BAD_ARGS), big=calls_of("big", GOOD_ARGS))
    body = ok(post(spec(models={"smol": TO_BIG}), backend, TOOL_BODY))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    (escalation,) = body["slmfleet"]["escalations"]
    assert escalation["reason"] == "contract" and "get_weather" in escalation["detail"]


def test_a_tool_call_breaking_its_schema_without_a_policy_is_a_502():
    backend = ScriptedBackend(smol=calls_of("smol", BAD_ARGS))
    error(post(spec(), backend, TOOL_BODY), 502, "output_invalid", says="do not match its parameters")


def test_a_call_to_a_tool_that_was_not_offered_is_a_502():
    backend = ScriptedBackend(smol=calls_of("smol", ToolCall("c", "get_stock", "{}")))
    error(post(spec(), backend, TOOL_BODY), 502, "output_invalid", says="get_stock")


def test_required_tool_choice_answered_in_text_is_a_contract_failure():
    backend = ScriptedBackend(smol="It is sunny.")
    error(post(spec(), backend, {**TOOL_BODY, "tool_choice": "required"}), 502, "output_invalid", "no tool call")


def test_required_tool_choice_answered_in_text_escalates():
    backend = ScriptedBackend(smol="It is sunny.", big=calls_of("big", GOOD_ARGS))
    body = ok(post(spec(models={"smol": TO_BIG}), backend, {**TOOL_BODY, "tool_choice": "required"}))
    assert body["slmfleet"]["escalations"][0]["reason"] == "contract"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_auto_tool_choice_answered_in_text_is_accepted():
    backend = ScriptedBackend(smol="It is sunny.")
    body = ok(post(spec(), backend, {**TOOL_BODY, "tool_choice": "auto"}))
    assert body["choices"][0]["message"]["content"] == "It is sunny."


# --- truncation ----------------------------------------------------------------------------------------------

CUT_JSON = result("smol", '{"name": "Ada", "ci', finish_reason="length")
WHOLE_JSON = '{"name": "Ada", "city": "London", "age": 36}'


def test_json_cut_at_max_tokens_without_a_policy_is_retried_once_then_asks_to_raise_max_tokens():
    backend = ScriptedBackend(smol=CUT_JSON)
    err = error(post(spec(), backend, {"model": "extract"}), 400, "bad_request", says="raise max_tokens")
    assert "192" in err["message"]  # the extract specialist's own 96, doubled by the one retry
    assert backend.models() == ["smol", "smol"]
    assert [r.schema_tokens for _, r in backend.calls] == [None, 96]  # same bound on the retry


def test_a_cut_answer_without_a_policy_is_answered_by_its_retry():
    backend = ScriptedBackend(smol=[CUT_JSON, WHOLE_JSON])
    ok(post(spec(), backend, {"model": "extract"}))
    assert backend.models() == ["smol", "smol"]


def test_json_cut_at_max_tokens_is_retried_on_the_same_model_with_more_tokens():
    backend = ScriptedBackend(smol=[CUT_JSON, WHOLE_JSON], big=WHOLE_JSON)
    policy = {"to": "big", "retries": 1}
    body = ok(post(spec(specialists={"extract": policy}), backend, {"model": "extract"}))
    assert json.loads(body["choices"][0]["message"]["content"])["city"] == "London"
    assert backend.models() == ["smol", "smol"]
    assert [r.max_tokens for _, r in backend.calls] == [None, 192]  # the specialist's 96, doubled
    # the retry keeps the first call's schema bound (fitted at two characters a token for 96): with 192 tokens
    # its longest answer fits even at one character a token
    assert [r.schema_tokens for _, r in backend.calls] == [None, 96]
    assert [a["action"] for a in body["slmfleet"]["attempts"]] == ["retry", "accept"]
    assert body["slmfleet"]["escalations"] == []


def test_a_request_max_tokens_is_the_base_of_the_retry():
    backend = ScriptedBackend(smol=[CUT_JSON, WHOLE_JSON])
    policy = {"to": "big", "retries": 1}
    ok(post(spec(specialists={"extract": policy}), backend, {"model": "extract", "max_tokens": 50}))
    assert [r.max_tokens for _, r in backend.calls] == [50, 100]


def test_retries_spent_then_escalates():
    backend = ScriptedBackend(smol=CUT_JSON, big=WHOLE_JSON)
    policy = {"to": "big", "retries": 1}
    body = ok(post(spec(specialists={"extract": policy}), backend, {"model": "extract"}))
    assert backend.models() == ["smol", "smol", "big"]
    assert body["slmfleet"]["served_by"] == "big"


# --- which policy applies -------------------------------------------------------------------------------------

JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}},
}


def test_a_model_policy_applies_to_chat_calls_naming_the_model():
    backend = ScriptedBackend(smol='{"n": "five"}', big='{"n": 5}')
    body = ok(post(spec(models={"smol": TO_BIG}), backend, {"model": "smol", "response_format": JSON_FORMAT}))
    assert body["slmfleet"]["served_by"] == "big"
    assert body["choices"][0]["message"]["content"] == '{"n": 5}'


def test_a_model_policy_applies_to_its_specialists_without_one():
    backend = ScriptedBackend(smol=dead("smol"), big="A summary.")
    body = ok(post(spec(models={"smol": TO_BIG}), backend, {"model": "summarize"}))
    assert body["slmfleet"]["escalations"][0]["reason"] == "unavailable"


def test_a_specialist_policy_replaces_its_models():
    backend = ScriptedBackend(smol=dead("smol"), big="refund")
    fleet = spec(models={"smol": TO_BIG}, specialists={"intent": {"to": "big", "reasons": ["contract"]}})
    error(post(fleet, backend, {"model": "intent"}), 503, "engine_dead")
    assert backend.models() == ["smol"]


def test_an_llm_tier_model_never_escalates():
    backend = ScriptedBackend(big=dead("big"))
    error(post(spec(models={"big": TO_BIG}), backend, {"model": "big"}), 503, "engine_dead")
    assert backend.models() == ["big"]


def test_an_llm_tier_model_accepts_low_confidence():
    backend = ScriptedBackend(big=result("big", "ok", mean_logprob=math.log(0.1)))
    policy = {"to": "big", "min_confidence": 0.9}
    body = ok(post(spec(models={"big": policy}), backend, {"model": "big"}))
    assert body["slmfleet"]["served_by"] == "big" and backend.models() == ["big"]


# --- streaming -----------------------------------------------------------------------------------------------


def test_a_stream_under_a_policy_carries_the_escalated_answer_and_the_record():
    backend = ScriptedBackend(smol="banana", big="refund")
    chunks = sse(post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent", "stream": True}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "refund"  # never the broken "banana"
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["slmfleet"]["served_by"] == "big"
    assert final["slmfleet"]["escalations"][0]["from_model"] == "smol"


def test_a_stream_whose_escalation_fails_is_a_plain_http_error():
    backend = ScriptedBackend(smol=dead("smol"), big=dead("big"))
    resp = post(spec(specialists={"intent": TO_BIG}), backend, {"model": "intent", "stream": True})
    assert resp.headers["content-type"].startswith("application/json")
    error(resp, 503, "engine_dead")
    assert backend.models() == ["smol", "big"]


def test_a_stream_with_a_request_contract_and_no_policy_is_judged_first():
    backend = ScriptedBackend(smol='{"n": "five"}')
    body = {"model": "smol", "response_format": JSON_FORMAT, "stream": True}
    error(post(spec(), backend, body), 502, "output_invalid")


def test_a_stream_with_a_specialist_contract_and_no_policy_is_judged_first():
    backend = ScriptedBackend(smol="banana")
    error(post(spec(), backend, {"model": "intent", "stream": True}), 502, "output_invalid")


def test_a_streamed_specialist_json_cut_at_max_tokens_is_the_same_400_as_unstreamed():
    backend = ScriptedBackend(smol=CUT_JSON)
    error(post(spec(), backend, {"model": "extract", "stream": True}), 400, "bad_request", says="raise max_tokens")


def test_free_text_from_a_dead_model_is_escalated_before_the_first_byte():
    backend = ScriptedBackend(smol=dead("smol"), big="A summary.")
    chunks = sse(post(spec(specialists={"summarize": TO_BIG}), backend, {"model": "summarize", "stream": True}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "A summary."
    assert chunks[-1]["slmfleet"]["escalations"][0]["reason"] == "unavailable"
    assert backend.models() == ["smol", "big"]


def test_free_text_from_a_dead_model_without_a_policy_is_a_plain_503():
    backend = ScriptedBackend(smol=dead("smol"))
    error(post(spec(), backend, {"model": "summarize", "stream": True}), 503, "engine_dead")
    assert backend.models() == ["smol"]


# --- pipeline:<name> -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_pipeline_is_an_openai_error_naming_its_step(stream):
    backend = ScriptedBackend(smol=dead("smol"), big=dead("big"))
    body = {"model": "pipeline:support-triage", "stream": stream}
    resp = post(spec(), backend, body, pipelines=True)
    assert resp.headers["content-type"].startswith("application/json")
    err = error(resp, 503, "pipeline_unavailable", says="support-triage")
    assert "'classify'" in err["message"]
    assert backend.models() == ["smol"]  # no escalation on this pipeline


def test_a_failed_pipeline_step_escalates_under_the_pipelines_policy():
    backend = ScriptedBackend(smol=dead("smol"), big="other")
    fleet = spec(pipeline_escalation={"to": "big", "reasons": ["unavailable"]})
    body = ok(post(fleet, backend, {"model": "pipeline:support-triage"}, pipelines=True))
    assert body["choices"][0]["message"]["content"] == "other"
    assert set(backend.models()) == {"smol", "big"}


def test_each_chat_escalation_is_reported_to_the_routers_metrics_hook():
    backend = ScriptedBackend(smol="banana", big="refund")
    seen = []
    app = build_api(spec(specialists={"intent": {"to": "big"}}), backend, on_escalation=lambda *e: seen.append(e))
    resp = TestClient(app, raise_server_exceptions=False).post(
        "/v1/chat/completions", json={"model": "intent", "messages": [{"role": "user", "content": "refund please"}]}
    )
    assert resp.status_code == 200, resp.text
    assert seen == [("intent", "contract")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_at_zero_is_woken_and_the_llm_tier_answers_meanwhile_labelled(stream):
    fleet = spec(specialists={"summarize": {"to": "big"}})
    backend = ScriptedBackend(cold={"smol"}, smol="from smol", big="from big")
    resp = post(fleet, backend, {"model": "summarize", "stream": stream})
    report = sse(resp)[-1]["slmfleet"] if stream else ok(resp)["slmfleet"]
    assert backend.models() == ["big"] and backend.woken == ["smol"]  # smol was never waited for
    assert report["served_by"] == "big"
    (escalation,) = report["escalations"]
    assert escalation["reason"] == "unavailable" and "scaled to zero" in escalation["detail"], escalation


def test_a_model_at_zero_without_an_escalation_target_is_waited_for():
    backend = ScriptedBackend(cold={"smol"}, smol="from smol")
    body = ok(post(spec(), backend, {"model": "summarize"}))
    assert backend.models() == ["smol"] and backend.woken == []  # not even asked: nothing else could answer
    assert body["choices"][0]["message"]["content"] == "from smol" and body["slmfleet"]["escalations"] == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_with_no_running_replica_is_not_waited_for_when_the_call_may_escalate(stream):
    fleet = spec(specialists={"summarize": {"to": "big"}})
    backend = ScriptedBackend(down={"smol"}, smol="from smol", big="from big")
    resp = post(fleet, backend, {"model": "summarize", "stream": stream})
    report = sse(resp)[-1]["slmfleet"] if stream else ok(resp)["slmfleet"]
    assert backend.models() == ["big"] and backend.woken == []  # a down model is being replaced, not woken
    (escalation,) = report["escalations"]
    assert escalation["reason"] == "unavailable" and "no running replica" in escalation["detail"], escalation


def test_a_model_with_no_running_replica_is_waited_for_when_nothing_else_could_answer():
    backend = ScriptedBackend(down={"smol"}, smol="from smol")
    assert ok(post(spec(), backend, {"model": "summarize"}))["slmfleet"]["served_by"] == "smol"


def test_a_cold_start_does_not_escalate_when_the_policy_leaves_out_unavailable():
    fleet = spec(specialists={"summarize": {"to": "big", "reasons": ["contract"]}})
    backend = ScriptedBackend(cold={"smol"}, smol="from smol", big="from big")
    assert ok(post(fleet, backend, {"model": "summarize"}))["slmfleet"]["served_by"] == "smol"
    assert backend.models() == ["smol"]
