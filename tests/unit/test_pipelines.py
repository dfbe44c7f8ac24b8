"""Pipeline evaluation against a fake model caller: steps, conditions, tools, escalation, events, cost, spans."""

import asyncio
import copy
import math
from pathlib import Path

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cluster.spec import load_spec, parse_spec
from cluster.spec_errors import SpecError
from deployments.pipeline.runner import PipelineRunner, UnknownPipelineError
from deployments.pipeline.tools import ToolRegistry
from deployments.protocol import Contract, GenerationError, GenerationRequest, GenerationResult

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "fleet.yaml"
DEMO = yaml.safe_load(EXAMPLE.read_text())
HANG = object()  # scripted answer: never reply (exercises the step timeout)
PROMPT_TOKENS, COMPLETION_TOKENS = 100, 10

HAPPY = {
    "smol/intent": "refund",
    "smol/order-fields": '{"order_id": "A1002", "issue": "arrived broken"}',
    "smol/support-reply": "Sorry about that; your refund is on its way.",
}
MESSAGE = {"message": "My order A1002 arrived broken, I want my money back"}


class FakeModelCaller:
    """A fake stand-in for the model deployment handles: scripted answers, every call recorded.

    Answers are keyed ``"<model>/<specialist>"`` or ``"<model>"``; a list is answered in order and its last item
    repeats. An answer is text (finish_reason "stop"), a GenerationResult, an exception to raise, or HANG.
    """

    def __init__(self, script: dict):
        self.script = {key: list(value) if isinstance(value, list) else [value] for key, value in script.items()}
        self.calls: list[tuple[str, GenerationRequest]] = []
        self.cancelled = 0

    async def __call__(self, model: str, request: GenerationRequest) -> GenerationResult:
        self.calls.append((model, request))
        key = f"{model}/{request.specialist}"
        answers = self.script.get(key) or self.script.get(model)
        if answers is None:
            raise AssertionError(f"FakeModelCaller has no answer scripted for {key}")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is HANG:
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled += 1
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, GenerationResult):
            return answer
        return GenerationResult(
            model=model,
            text=answer,
            finish_reason="stop",
            prompt_tokens=PROMPT_TOKENS,
            completion_tokens=COMPLETION_TOKENS,
        )

    def models(self) -> list[str]:
        return [model for model, _ in self.calls]

    def request(self, specialist: str, model: str | None = None) -> GenerationRequest:
        return next(r for m, r in self.calls if r.specialist == specialist and model in (None, m))


def demo_spec(mutate=None):
    data = copy.deepcopy(DEMO)
    if mutate:
        mutate(data["pipelines"]["support-triage"])
    return parse_spec(data)


def runner(script, spec=None, **kwargs):
    spec = spec or load_spec(EXAMPLE)
    fake = FakeModelCaller({**HAPPY, **script})
    return PipelineRunner(spec, fake, ToolRegistry.from_spec(spec), **kwargs), fake


def run(script=None, spec=None, inputs=MESSAGE, **kwargs):
    pipeline_runner, fake = runner(script or {}, spec, **kwargs)
    return asyncio.run(pipeline_runner.run("support-triage", inputs)), fake


# --- the demo pipeline ---------------------------------------------------------------------------------------


def test_demo_pipeline_runs_every_step_on_the_small_model():
    result, fake = run()
    assert result.status == "ok"
    assert result.output == "Sorry about that; your refund is on its way."
    assert [(s.name, s.status, s.model) for s in result.steps] == [
        ("classify", "ok", "smol"),
        ("extract", "ok", "smol"),
        ("lookup", "ok", None),
        ("reply", "ok", "smol"),
    ]
    assert result.step("extract").output == {"order_id": "A1002", "issue": "arrived broken"}
    assert result.step("lookup").args == {"order_id": "A1002", "issue": "arrived broken"}
    assert result.step("lookup").output["status"] == "processing"
    assert fake.models() == ["smol", "smol", "smol"]
    assert not any(s.escalated for s in result.steps)


def test_requests_carry_specialist_contract_and_templated_input():
    _, fake = run()
    classify = fake.request("intent")
    assert classify.messages == [{"role": "user", "content": MESSAGE["message"]}]
    assert classify.contract == Contract(choice=("refund", "order_status", "technical_issue", "other"))
    assert classify.max_tokens is None  # the specialist's own default applies
    assert fake.request("order-fields").contract.json_schema["required"] == ["order_id", "issue"]
    reply = fake.request("support-reply").messages[0]["content"]
    assert "Intent: refund\n" in reply
    assert '"status": "processing"' in reply
    assert "Lookup problem: \n" in reply


def test_tokens_and_cost_against_the_llm_counterfactual():
    result, _ = run()
    assert (result.tokens_in, result.tokens_out) == (300, 30)
    per_call = (PROMPT_TOKENS + COMPLETION_TOKENS) / 1000
    assert result.step("classify").cost == pytest.approx(0.0001 * per_call)
    assert result.step("classify").llm_cost == pytest.approx(0.005 * per_call)
    assert result.step("lookup").cost == 0.0
    assert result.cost.total == pytest.approx(3 * 0.0001 * per_call)
    assert result.cost.llm_counterfactual == pytest.approx(3 * 0.005 * per_call)
    assert result.cost.ratio == pytest.approx(0.02)
    assert result.cost.llm_model == "big"


def test_when_condition_skips_the_order_steps():
    result, fake = run({"smol/intent": "other"})
    assert [s.status for s in result.steps] == ["ok", "skipped", "skipped", "ok"]
    assert fake.models() == ["smol", "smol"]
    assert "Order record: \n" in fake.request("support-reply").messages[0]["content"]


def test_result_serialises_to_plain_json_data():
    result, _ = run()
    data = result.to_dict()
    assert data["steps"][1]["escalated"] is False
    assert data["cost"]["ratio"] == pytest.approx(0.02)
    assert yaml.safe_load(yaml.safe_dump(data)) == data


# --- escalation ----------------------------------------------------------------------------------------------


def test_contract_failure_escalates_the_same_request_to_the_llm_tier():
    good = HAPPY["smol/order-fields"]
    result, fake = run({"smol/order-fields": '{"order_id": 7, "issue": "x"}', "big/order-fields": good})
    extract = result.step("extract")
    assert extract.status == "ok"
    assert extract.model == "big"
    assert extract.output == {"order_id": "A1002", "issue": "arrived broken"}
    [escalation] = extract.escalations
    assert (escalation.from_model, escalation.to_model, escalation.reason) == ("smol", "big", "contract")
    assert "order_id: 7 is not of type 'string'" in escalation.detail
    small, large = fake.request("order-fields", "smol"), fake.request("order-fields", "big")
    assert (large.messages, large.specialist, large.contract) == (small.messages, small.specialist, small.contract)
    assert [a.action for a in extract.attempts] == ["escalate", "accept"]
    assert extract.cost == pytest.approx((0.0001 + 0.005) * 0.11)
    assert result.cost.ratio > 0.02


def test_truncated_json_is_retried_on_the_same_model_with_more_tokens():
    cut = GenerationResult(model="smol", text='{"order_id": "A10', finish_reason="length", completion_tokens=64)
    result, fake = run({"smol/order-fields": [cut, HAPPY["smol/order-fields"]]})
    extract = result.step("extract")
    assert (extract.status, extract.model, extract.escalated) == ("ok", "smol", False)
    assert [a.action for a in extract.attempts] == ["retry", "accept"]
    assert [r.max_tokens for m, r in fake.calls if r.specialist == "order-fields"] == [None, 128]


def test_truncated_again_escalates_after_the_retry():
    cut = GenerationResult(model="smol", text='{"order_id": "A10', finish_reason="length")
    result, fake = run({"smol/order-fields": cut, "big/order-fields": HAPPY["smol/order-fields"]})
    extract = result.step("extract")
    assert [(a.model, a.action) for a in extract.attempts] == [
        ("smol", "retry"),
        ("smol", "escalate"),
        ("big", "accept"),
    ]
    assert fake.request("order-fields", "big").max_tokens == 128  # the escalated call keeps the larger limit


def test_threshold_one_forces_every_model_step_to_escalate():
    spec = demo_spec(lambda p: p["escalation"].update(min_confidence=1.0))
    big = {f"big/{k.split('/')[1]}": v for k, v in HAPPY.items()}
    result, fake = run(big, spec)
    assert [s.model for s in result.steps if s.kind != "tool"] == ["big", "big", "big"]
    assert {e.reason for s in result.steps for e in s.escalations} == {"low_confidence"}
    assert all(request.logprobs for _, request in fake.calls)
    assert result.cost.ratio > 1  # escalating everything costs more than calling the LLM directly


def test_confidence_threshold_uses_exp_mean_logprob():
    def unsure(text, p):
        return GenerationResult(model="smol", text=text, finish_reason="stop", mean_logprob=math.log(p))

    spec = demo_spec(lambda p: p["escalation"].update(min_confidence=0.5))
    result, _ = run(
        {"smol/intent": unsure("refund", 0.3), "big/intent": "refund", "smol/support-reply": unsure("ok", 0.9)}, spec
    )
    assert result.step("classify").escalations[0].reason == "low_confidence"
    assert not result.step("reply").escalated


def test_step_policy_overrides_the_pipeline_default():
    def mutate(pipeline):
        pipeline["steps"]["reply"]["escalation"] = {"min_confidence": 1.0}

    result, _ = run({"big/support-reply": "from big"}, demo_spec(mutate))
    assert [s.escalated for s in result.steps] == [False, False, False, True]
    assert result.output == "from big"


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (RuntimeError("no healthy replica at 10.0.0.7"), "the call to model 'smol' raised RuntimeError"),
        (GenerationResult(model="smol", error=GenerationError("engine_dead", "engine died")), "engine_dead"),
        (GenerationResult(model="smol", error=GenerationError("overloaded", "queue full")), "overloaded"),
        (HANG, "timeout after 0.05s"),
    ],
)
def test_an_unavailable_small_model_escalates(answer, detail):
    spec = demo_spec(lambda p: p.update(step_timeout_s=0.05))
    result, fake = run({"smol/intent": answer, "big/intent": "refund"}, spec)
    classify = result.step("classify")
    assert (classify.status, classify.model) == ("ok", "big")
    assert classify.escalations[0].reason == "unavailable"
    assert detail in classify.escalations[0].detail
    assert "10.0.0.7" not in str(result.to_dict())  # an exception's own text (addresses, paths) stays in the log
    assert result.status == "ok"
    assert fake.cancelled == (1 if answer is HANG else 0)


def down(*models):
    """An ``unready`` check that says each of ``models`` has no running replica (and records what it was asked)."""
    asked = []

    async def unready(model):
        asked.append(model)
        return GenerationError("engine_dead", f"model '{model}' has no running replica") if model in models else None

    unready.asked = asked
    return unready


def test_a_step_whose_model_has_no_running_replica_escalates_without_calling_it():
    big = {f"big/{name}": answer for name, answer in ((k.split("/")[1], v) for k, v in HAPPY.items())}
    unready = down("smol")
    result, fake = run(big, unready=unready)
    assert result.status == "ok", result.error
    assert fake.models() == ["big", "big", "big"]  # smol was never waited for
    for step in ("classify", "extract", "reply"):
        (escalation,) = result.step(step).escalations
        assert escalation.reason == "unavailable" and "no running replica" in escalation.detail
    assert set(unready.asked) == {"smol"}  # the LLM tier is called as it is: it has no one to escalate to


def test_a_step_that_cannot_escalate_calls_its_model_even_when_it_has_no_running_replica():
    spec = demo_spec(lambda p: p["escalation"].update(reasons=["contract"]))
    result, fake = run(spec=spec, unready=down("smol"))
    assert result.status == "ok" and set(fake.models()) == {"smol"}  # it waits for the replica, as before


def test_a_bad_request_fails_the_run_without_escalating():
    error = GenerationResult(model="smol", error=GenerationError("bad_request", "messages too long"))
    result, fake = run({"smol/intent": error})
    assert result.status == "failed"
    assert result.output is None
    assert (result.error.step, result.error.kind) == ("classify", "error")
    assert "bad_request" in result.error.message
    assert [s.name for s in result.steps] == ["classify"]
    assert fake.models() == ["smol"]


def test_when_the_llm_fails_the_contract_too_the_step_fails():
    result, _ = run({"smol/order-fields": "nope", "big/order-fields": "still nope"})
    extract = result.step("extract")
    assert extract.status == "failed"
    assert extract.error.kind == "contract"
    assert extract.text == "still nope"
    assert result.status == "failed"
    assert [s.name for s in result.steps] == ["classify", "extract"]


def test_no_escalation_target_means_fail():
    spec = demo_spec(lambda p: p["escalation"].update(to=None))
    result, fake = run({"smol/order-fields": "nope"}, spec)
    assert result.step("extract").error.kind == "contract"
    assert "big" not in fake.models()


# --- tools ---------------------------------------------------------------------------------------------------


def test_a_failing_tool_is_reported_and_the_reply_still_runs():
    result, fake = run({"smol/order-fields": '{"order_id": "Z999", "issue": "late"}'})
    lookup = result.step("lookup")
    assert lookup.status == "failed"
    assert lookup.error.kind == "tool"
    assert lookup.error.message.startswith("order-status: LookupError: no order 'Z999'")
    assert result.step("reply").status == "ok"
    assert result.status == "ok"  # on_error: continue
    assert "Lookup problem: order-status: LookupError" in fake.request("support-reply").messages[0]["content"]


def test_a_failing_tool_stops_the_run_by_default():
    def mutate(pipeline):
        del pipeline["steps"]["lookup"]["on_error"]

    result, _ = run({"smol/order-fields": '{"order_id": "Z999", "issue": "late"}'}, demo_spec(mutate))
    assert result.status == "failed"
    assert (result.error.step, result.error.kind) == ("lookup", "tool")


def test_a_specialist_fills_tool_arguments_under_the_tools_schema():
    def mutate(pipeline):
        steps = pipeline["steps"]
        del steps["extract"]
        steps["lookup"] = {"tool": "order-status", "specialist": "order-fields", "input": "{{ input.message }}"}
        steps["reply"]["input"] = "{{ steps.lookup.output }}"

    result, fake = run({}, demo_spec(mutate))
    lookup = result.step("lookup")
    assert (lookup.status, lookup.model, lookup.specialist) == ("ok", "smol", "order-fields")
    assert lookup.args == {"order_id": "A1002", "issue": "arrived broken"}
    assert lookup.output["status"] == "processing"
    assert fake.request("order-fields").contract == Contract(json_schema=DEMO["tools"]["order-status"]["args_schema"])
    assert lookup.tokens_in == PROMPT_TOKENS


# --- other step kinds, outputs, conditions -------------------------------------------------------------------


def test_model_step_sends_instructions_as_system_prompt():
    def mutate(pipeline):
        pipeline["steps"]["reply"] = {
            "model": "big",
            "instructions": "Be brief.",
            "input": "{{ steps.classify.output }}",
        }

    result, fake = run({"big": "free text"}, demo_spec(mutate))
    assert result.output == "free text"
    model, request = fake.calls[-1]
    assert (model, request.specialist, request.contract) == ("big", None, None)
    assert request.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "refund"}]


def test_structured_pipeline_output():
    def mutate(pipeline):
        pipeline["output"] = {"intent": "{{ steps.classify.output }}", "order": "{{ steps.lookup.output.status }}"}

    result, _ = run({}, demo_spec(mutate))
    assert result.output == {"intent": "refund", "order": "processing"}


def test_a_condition_that_cannot_be_evaluated_fails_its_step():
    def mutate(pipeline):
        pipeline["steps"]["extract"]["when"] = "steps.classify.output > 3"

    result, _ = run({}, demo_spec(mutate))
    assert result.step("extract").error.kind == "condition"
    assert result.status == "failed"


def test_unknown_pipeline_and_bad_inputs():
    pipeline_runner, _ = runner({})
    with pytest.raises(UnknownPipelineError, match="did you mean 'support-triage'"):
        asyncio.run(pipeline_runner.run("support-triag", MESSAGE))
    with pytest.raises(TypeError, match="mapping"):
        asyncio.run(pipeline_runner.run("support-triage", ["hi"]))
    assert pipeline_runner.pipelines == ["support-triage"]


def test_latency_comes_from_the_injected_clock():
    ticks = iter(range(1000))
    result, _ = run(clock=lambda: float(next(ticks)))
    assert result.latency_s > 0
    assert all(s.latency_s >= 1 for s in result.steps)
    assert result.steps[0].attempts[0].latency_s == 1.0


# --- events --------------------------------------------------------------------------------------------------


def test_run_events_streams_steps_then_the_result():
    pipeline_runner, _ = runner({"smol/order-fields": "nope", "big/order-fields": HAPPY["smol/order-fields"]})

    async def collect():
        return [event async for event in pipeline_runner.run_events("support-triage", MESSAGE, run_id="r1")]

    events = asyncio.run(collect())
    assert [(e.type, e.step) for e in events] == [
        ("step_started", "classify"),
        ("step_finished", "classify"),
        ("step_started", "extract"),
        ("step_escalated", "extract"),
        ("step_finished", "extract"),
        ("step_started", "lookup"),
        ("step_finished", "lookup"),
        ("step_started", "reply"),
        ("step_finished", "reply"),
        ("pipeline_finished", None),
    ]
    assert {e.run_id for e in events} == {"r1"}
    assert events[3].data == {
        "from_model": "smol",
        "to_model": "big",
        "reason": "contract",
        "detail": events[3].data["detail"],
    }
    assert events[4].data["model"] == "big"
    assert events[-1].data["status"] == "ok"
    assert events[-1].sse().startswith("event: pipeline_finished\ndata: {")


def test_skipped_steps_only_report_finished():
    pipeline_runner, _ = runner({"smol/intent": "other"})

    async def collect():
        return [(e.type, e.step) async for e in pipeline_runner.run_events("support-triage", MESSAGE)]

    assert ("step_finished", "extract") in asyncio.run(collect())
    assert ("step_started", "extract") not in asyncio.run(collect())


def test_every_finished_run_reaches_on_finished_streamed_or_not():
    """The router counts runs and escalations from this hook, so SSE runs must reach it like JSON runs."""
    finished = []
    script = {"smol/order-fields": "nope", "big/order-fields": HAPPY["smol/order-fields"]}
    pipeline_runner, _ = runner(script, on_finished=finished.append)

    async def both():
        json_run = await pipeline_runner.run("support-triage", MESSAGE, run_id="json")
        events = [event async for event in pipeline_runner.run_events("support-triage", MESSAGE, run_id="sse")]
        return json_run, events

    json_run, events = asyncio.run(both())
    assert [r.run_id for r in finished] == ["json", "sse"]
    assert finished[0] is json_run
    assert finished[1].to_dict() == events[-1].data
    assert [e.reason for s in finished[1].steps for e in s.escalations] == ["contract"]


def test_closing_the_event_stream_cancels_the_run():
    pipeline_runner, fake = runner({"smol/intent": HANG})

    async def first_then_close():
        stream = pipeline_runner.run_events("support-triage", MESSAGE)
        first = await anext(stream)
        await asyncio.sleep(0.01)
        await stream.aclose()
        await asyncio.sleep(0.01)
        return first

    assert asyncio.run(first_then_close()).type == "step_started"
    assert fake.cancelled == 1


# --- traces --------------------------------------------------------------------------------------------------


def test_spans_per_run_step_model_call_and_tool():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    script = {"smol/order-fields": "nope", "big/order-fields": HAPPY["smol/order-fields"]}
    run(script, tracer_provider=provider)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    by_id = {span.context.span_id: span for span in exporter.get_finished_spans()}

    def parent(name):
        return by_id[spans[name].parent.span_id].name

    assert parent("step classify") == "pipeline support-triage"
    assert parent("model_call big") == "step extract"
    assert parent("tool order-status") == "step lookup"
    calls = [s for s in exporter.get_finished_spans() if s.name.startswith("model_call")]
    assert len(calls) == 4  # classify, extract on smol, extract on big, reply
    escalated = spans["model_call big"].attributes
    assert escalated["slmfleet.model"] == "big"
    assert escalated["slmfleet.specialist"] == "order-fields"
    assert escalated["slmfleet.escalated"] is True
    assert escalated["slmfleet.escalation_reason"] == "contract"
    assert (escalated["slmfleet.tokens_in"], escalated["slmfleet.tokens_out"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    step = spans["step extract"].attributes
    assert (step["slmfleet.model"], step["slmfleet.escalated"], step["slmfleet.escalation_reason"]) == (
        "big",
        True,
        "contract",
    )
    assert step["slmfleet.tokens_in"] == 2 * PROMPT_TOKENS
    assert spans["step classify"].attributes["slmfleet.escalated"] is False


# --- the spec side -------------------------------------------------------------------------------------------


def test_example_and_default_fleets_load():
    assert "support-triage" in load_spec(EXAMPLE).pipelines
    load_spec(ROOT / "fleet.yaml")


@pytest.mark.parametrize(
    ("mutate", "path", "text"),
    [
        (
            lambda p: p["steps"]["classify"].update(specialist="intnet"),
            "steps.classify.specialist",
            "did you mean 'intent'",
        ),
        (lambda p: p["escalation"].update(to="smol"), "escalation.to", "escalation targets an slm-tier model"),
        (
            lambda p: p["steps"]["reply"].update(escalation={"to": "bigg"}),
            "steps.reply.escalation.to",
            "did you mean 'big'",
        ),
        (
            lambda p: p["steps"]["classify"].update(when="steps.reply.output == 'x'"),
            "steps.classify.when",
            "has not run yet",
        ),
        (
            lambda p: p["steps"]["reply"].update(input="{{ steps.lookp.output }}"),
            "steps.reply.input",
            "did you mean 'lookup'",
        ),
        (
            lambda p: p["steps"]["lookup"].update(args={"order_id": "{{ steps.extract.output.orderid }}"}),
            "steps.lookup.args",
            "did you mean 'order_id'",
        ),
        (lambda p: p["steps"]["lookup"].update(tool="order-stat"), "steps.lookup.tool", "did you mean 'order-status'"),
        (lambda p: p["steps"]["lookup"].update(specialist="order-fields"), "steps.lookup", "exactly one of specialist"),
        (lambda p: p["steps"]["reply"].update(model="smol"), "steps.reply", "exactly one of specialist, model or tool"),
        (lambda p: p["steps"]["reply"].update(when="steps.classify.output = 'x'"), "steps.reply.when", "column"),
        (lambda p: p["steps"]["reply"].update(input="{{ input.message"), "steps.reply.input", "never closed"),
        (lambda p: p["steps"]["reply"].update(retry=1), "steps.reply.retry", "unknown key"),
        (lambda p: p["escalation"].update(min_confidence=1.5), "escalation.min_confidence", "less than or equal to 1"),
        (lambda p: p["steps"].update({"Bad Name": {"specialist": "intent"}}), "steps.Bad Name", "pattern"),
        (lambda p: p["steps"]["extract"].update(after=["reply"]), "steps.extract.after[0]", "comes later"),
        (lambda p: p["steps"]["reply"].update(after=["clasify"]), "steps.reply.after[0]", "did you mean 'classify'"),
    ],
)
def test_spec_errors_name_the_field(mutate, path, text):
    with pytest.raises(SpecError) as caught:
        demo_spec(mutate)
    report = str(caught.value)
    assert f"pipelines.support-triage.{path}" in report
    assert text in report


def test_each_attempt_records_the_engine_time_its_replica_measured():
    timed = GenerationResult(model="smol", text="refund", finish_reason="stop", extra={"engine_s": 0.25})
    result, _ = run({"smol/intent": timed})
    classify = next(s for s in result.steps if s.name == "classify")
    assert [a.engine_s for a in classify.attempts] == [0.25]
    assert classify.to_dict()["attempts"][0]["engine_s"] == 0.25


# --- parallel pipelines (a DAG of steps) ----------------------------------------------------------------------


class TimedCaller(FakeModelCaller):
    """The fake caller, with every call taking ``delay_s`` and the calls in flight at once recorded."""

    def __init__(self, script, delay_s=0.05):
        super().__init__(script)
        self.delay_s = delay_s
        self.in_flight = 0
        self.most_at_once = 0
        self.order = []

    async def __call__(self, model, request):
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        self.order.append(("start", request.specialist))
        try:
            await asyncio.sleep(self.delay_s)
            return await super().__call__(model, request)
        finally:
            self.in_flight -= 1
            self.order.append(("end", request.specialist))


FAN_OUT = {
    "parallel": True,
    "steps": {
        "intent": {"specialist": "intent"},
        "fields": {"specialist": "order-fields"},
        "reply": {
            "specialist": "support-reply",
            "input": "{{ steps.intent.output }} / {{ steps.fields.output.order_id }}",
        },
        "audit": {"specialist": "intent", "after": ["reply"]},
    },
}


def parallel_run(pipeline, script=None):
    data = copy.deepcopy(DEMO)
    data["pipelines"] = {"fan-out": pipeline}
    spec = parse_spec(data)
    fake = TimedCaller({**HAPPY, **(script or {})})
    result = asyncio.run(PipelineRunner(spec, fake, ToolRegistry.from_spec(spec)).run("fan-out", MESSAGE))
    return result, fake


def test_independent_steps_of_a_parallel_pipeline_run_at_the_same_time():
    result, fake = parallel_run(FAN_OUT)
    assert result.status == "ok"
    assert fake.most_at_once == 2  # intent and fields together; reply and audit each wait
    reply = fake.order.index(("start", "support-reply"))
    assert fake.order.index(("end", "intent")) < reply and fake.order.index(("end", "order-fields")) < reply
    assert fake.request("support-reply").messages[-1]["content"] == "refund / A1002"
    audit_start = max(i for i, event in enumerate(fake.order) if event == ("start", "intent"))
    assert fake.order.index(("end", "support-reply")) < audit_start  # `after` orders it without a reference
    assert [s.name for s in result.steps] == ["intent", "fields", "reply", "audit"]  # as written
    assert result.output == "refund"  # default output: the last step as written


def test_the_same_pipeline_without_parallel_runs_one_step_at_a_time():
    result, fake = parallel_run({**FAN_OUT, "parallel": False})
    assert result.status == "ok" and fake.most_at_once == 1


def test_a_stopping_failure_in_a_parallel_pipeline_cancels_the_steps_still_running():
    script = {"smol/intent": RuntimeError("boom"), "big/intent": RuntimeError("boom"), "smol/order-fields": HANG}
    pipeline = {**FAN_OUT, "escalation": {"to": None}}
    result, fake = parallel_run(pipeline, script)
    assert result.status == "failed"
    assert result.error.step == "intent"
    assert [s.name for s in result.steps] == ["intent"]  # fields was cancelled mid-call, reply never started
    assert fake.cancelled == 1
    assert all(specialist != "support-reply" for _, specialist in fake.order)


# --- the run's deadline ------------------------------------------------------------------------------------------


class SteppingClock:
    """Each model call takes ``per_call_s`` on this clock."""

    def __init__(self, per_call_s: float) -> None:
        self.now, self.per_call_s = 0.0, per_call_s

    def __call__(self) -> float:
        return self.now


def test_each_model_call_may_queue_only_for_what_remains_of_the_pipeline_deadline():
    clock = SteppingClock(per_call_s=0.6)
    spec = demo_spec(lambda p: p.update(latency_objective_s=1.2))
    fake = FakeModelCaller(HAPPY)

    async def slow_call(model, request):
        clock.now += clock.per_call_s
        return await fake(model, request)

    pipeline_runner = PipelineRunner(spec, slow_call, ToolRegistry.from_spec(spec), clock=clock)
    result = asyncio.run(pipeline_runner.run("support-triage", MESSAGE))
    budgets = {r.specialist: r.queue_budget_s for _, r in fake.calls}
    assert budgets == {"intent": pytest.approx(1.2), "order-fields": pytest.approx(0.6)}  # 0.6 s went on classify
    reply = next(s for s in result.steps if s.name == "reply")  # nothing left: it fails at once, no model called
    assert result.status == "failed" and reply.status == "failed"
    assert "1.2 s deadline has passed" in reply.error.message


def test_without_a_deadline_calls_carry_no_queue_budget():
    result, fake = run()
    assert result.status == "ok"
    assert all(r.queue_budget_s is None for _, r in fake.calls)
