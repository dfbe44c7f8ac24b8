"""The support-triage pipeline on the real fleet over HTTP: structured steps, escalation, tools, traces, metrics."""

import json
import time

import httpx
import jsonschema
import pytest
import yaml

from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SPEC = yaml.safe_load((ROOT / "fleet.yaml").read_text())
INTENTS = SPEC["specialists"]["intent"]["output"]["choice"]
ORDER_SCHEMA = SPEC["specialists"]["order-fields"]["output"]["json_schema"]
MESSAGE = "My order A1002 arrived broken and I want a refund."


def run(fleet, pipeline, inputs, timeout=240):
    resp = httpx.post(f"{fleet.url}/v1/pipelines/{pipeline}/runs", json={"inputs": inputs}, timeout=timeout)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_demo_pipeline_runs_to_completion_with_valid_structured_outputs(fleet):
    result = run(fleet, "support-triage", {"message": MESSAGE})
    steps = {s["name"]: s for s in result["steps"]}
    assert result["status"] == "ok", result["error"]
    assert steps["classify"]["output"] in INTENTS
    if steps["extract"]["status"] == "ok":
        jsonschema.validate(steps["extract"]["output"], ORDER_SCHEMA)
    assert steps["reply"]["status"] == "ok" and steps["reply"]["text"].strip()
    assert result["output"] == steps["reply"]["output"]
    assert result["tokens_in"] > 0 and result["tokens_out"] > 0
    cost = result["cost"]
    assert cost["llm_model"] == "big" and cost["total"] > 0 and cost["llm_counterfactual"] >= cost["total"]


def test_threshold_one_escalates_every_model_step_to_the_llm_tier(fleet):
    result = run(fleet, "triage-always-escalate", {"message": MESSAGE})
    model_steps = [s for s in result["steps"] if s["kind"] == "specialist" and s["status"] != "skipped"]
    assert model_steps
    for step in model_steps:
        assert step["model"] == "big", step
        assert [(e["from_model"], e["to_model"], e["reason"]) for e in step["escalations"]] == [
            ("smol", "big", "low_confidence")
        ]
    assert result["cost"]["ratio"] > 0.9  # escalated tokens are billed at the LLM price


def test_a_failing_tool_is_reported_in_the_result(fleet):
    result = run(fleet, "lookup-order", {"order_id": "NO-SUCH-ORDER"})
    (step,) = result["steps"]
    assert step["status"] == "failed" and step["kind"] == "tool"
    assert "NO-SUCH-ORDER" in step["error"]["message"]
    assert result["status"] == "failed" and result["error"]["step"] == "lookup"


def test_a_working_tool_returns_its_record(fleet):
    result = run(fleet, "lookup-order", {"order_id": "A1002"})
    assert result["status"] == "ok"
    assert result["steps"][0]["output"]["order_id"] == "A1002"


def test_pipeline_is_a_chat_model_for_openai_clients(client):
    reply = client.chat.completions.create(
        model="pipeline:support-triage", messages=[{"role": "user", "content": MESSAGE}]
    )
    assert reply.choices[0].message.content.strip()
    assert reply.usage.total_tokens > 0


def test_pipeline_events_stream_as_sse(fleet):
    body = {"inputs": {"message": "The app crashes at login."}, "stream": True}
    with httpx.stream("POST", f"{fleet.url}/v1/pipelines/support-triage/runs", json=body, timeout=240) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    types = [e["type"] for e in events]
    assert types[0] == "step_started" and types[-1] == "pipeline_finished"
    assert "step_finished" in types


def spans(fleet):
    return [json.loads(line) for line in fleet.trace_file.read_text().splitlines() if line.strip()]


def test_one_trace_per_request_with_spans_for_router_steps_and_model_calls(fleet):
    run(fleet, "support-triage", {"message": "Where is order A1001?"})
    wanted = {"pipeline support-triage", "step classify", "model_call smol", "engine.generate"}
    deadline, names = time.monotonic() + 30, set()
    while not wanted <= names and time.monotonic() < deadline:  # each process exports its spans in batches
        time.sleep(1)
        roots = [s for s in spans(fleet) if s["name"] == "POST /v1/pipelines/support-triage/runs"]
        tree = [s for s in spans(fleet) if roots and s["context"]["trace_id"] == roots[-1]["context"]["trace_id"]]
        names = {s["name"] for s in tree}
    assert wanted <= names, names
    root = roots[-1]
    by_id = {s["context"]["span_id"]: s for s in tree}
    engine = next(s for s in tree if s["name"] == "engine.generate")
    parent = by_id[engine["parent_id"]]
    assert parent["name"].startswith("model_call"), "the model replica's span must hang under the router's call"
    assert engine["resource"]["attributes"]["service.name"].startswith("slmfleet-model-")
    assert root["resource"]["attributes"]["service.name"] == "slmfleet-router"
    call = next(s for s in tree if s["name"] == "model_call smol")
    for key in ("slmfleet.model", "slmfleet.specialist", "slmfleet.tokens_in", "slmfleet.tokens_out"):
        assert key in call["attributes"], key
    assert "slmfleet.escalated" in call["attributes"] or "slmfleet.escalated" in by_id[call["parent_id"]]["attributes"]


def test_cost_and_token_metrics_are_exported_for_prometheus(fleet, adapters):
    run(fleet, "support-triage", {"message": MESSAGE})
    tuned = {"model": "tuned-a", "messages": [{"role": "user", "content": MESSAGE}], "max_tokens": 4}
    assert httpx.post(f"{fleet.url}/v1/chat/completions", json=tuned, timeout=120).status_code == 200
    adapter_tag = f'adapter="{adapters["tuned-a"]}@1"'
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(fleet.metrics_url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        if "ray_slmfleet_pipeline_runs" in text and "ray_slmfleet_cost" in text and adapter_tag in text:
            break
        time.sleep(3)
    assert "ray_slmfleet_tokens_total{" in text or "ray_slmfleet_tokens" in text
    assert 'pipeline="support-triage"' in text
    assert adapter_tag in text  # an adapter specialist's tokens carry its adapter
    assert "ray_slmfleet_llm_counterfactual_cost" in text


def runs_counted(fleet, pipeline):
    """ray_slmfleet_pipeline_runs_total of one pipeline (all statuses) as Prometheus shows it now."""
    try:
        text = httpx.get(fleet.metrics_url, timeout=5).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ray_slmfleet_pipeline_runs") and f'pipeline="{pipeline}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_streamed_runs_count_in_the_run_metrics(fleet):
    before = runs_counted(fleet, "lookup-order") or 0.0
    body = {"inputs": {"order_id": "A1001"}, "stream": True}
    with httpx.stream("POST", f"{fleet.url}/v1/pipelines/lookup-order/runs", json=body, timeout=120) as resp:
        last = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")][-1]
    assert last["type"] == "pipeline_finished" and last["data"]["status"] == "ok"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (runs_counted(fleet, "lookup-order") or 0.0) < before + 1:
        time.sleep(2)
    assert runs_counted(fleet, "lookup-order") == before + 1


def test_a_parallel_pipeline_runs_independent_steps_at_once_on_the_real_fleet(fleet):
    result = run(fleet, "fan-out", {"message": MESSAGE})
    assert result["status"] == "ok", result["error"]
    intent, fields, reply = result["steps"]
    assert intent["output"] in INTENTS
    jsonschema.validate(fields["output"], ORDER_SCHEMA)
    assert result["output"] == {"intent": intent["output"], "order": fields["output"]}
    # the reply waited for both; the two independent steps overlapped (each took well over the router's overhead)
    overlap_s = intent["latency_s"] + fields["latency_s"] - (result["latency_s"] - reply["latency_s"])
    assert overlap_s > 0.05, (intent["latency_s"], fields["latency_s"], result["latency_s"], reply["latency_s"])
