"""The usage log on the real fleet: LLM-tier calls that opted in are sealed to the loop's key as they happen (a chat
call escalated by its specialist, a pipeline's escalated steps), others are not recorded, and only the private key
reads them back."""

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from cluster.convert.sealed_log import load_private_key, read_segment, segment_paths
from tests.e2e.conftest import usage_log_keys

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def logged_records(within_s: float, wanted: set[str]) -> list[dict]:
    """The log's records once every marker in ``wanted`` appears in one (the writer runs a moment behind)."""
    private_path, _, destination = usage_log_keys()
    private = load_private_key(private_path)
    deadline = time.monotonic() + within_s
    while True:
        records = [r for path in segment_paths(destination) for r in read_segment(path, private)]
        text = repr(records)
        if all(marker in text for marker in wanted) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def marked(records: list[dict], marker: str) -> list[dict]:
    return [r for r in records if marker in repr(r["messages"])]


def test_opted_in_llm_tier_calls_are_sealed_and_others_are_not_recorded(fleet, client):
    chat_marker, pipeline_marker, plain_marker = (uuid.uuid4().hex[:10] for _ in range(3))
    email = f"dana.{chat_marker}@example.org"
    reply = client.chat.completions.create(
        model="intent-unsure", messages=[{"role": "user", "content": f"Refund me please, write to {email}."}]
    )
    assert reply.model_extra["slmfleet"]["served_by"] == "big"
    run = httpx.post(
        f"{fleet.url}/v1/pipelines/triage-always-escalate/runs",
        json={"inputs": {"message": f"Order A1002 ({pipeline_marker}) arrived broken, refund it."}},
        timeout=240,
    )
    assert run.status_code == 200, run.text
    client.chat.completions.create(model="big", messages=[{"role": "user", "content": plain_marker}], max_tokens=4)

    records = logged_records(30, {chat_marker, pipeline_marker})
    (chat,) = marked(records, chat_marker)
    assert (chat["model"], chat["specialist"], chat["pipeline"]) == ("big", "intent-unsure", None)
    assert (chat["escalated_from"], chat["escalation_reason"]) == ("smol", "low_confidence")
    assert chat["answer"] == reply.choices[0].message.content and chat["contract"]["choice"]
    assert chat["tokens_out"] == reply.usage.completion_tokens and chat["cost"] > 0
    steps = marked(records, pipeline_marker)
    escalated = [s for s in run.json()["steps"] if s["escalations"]]
    assert len(steps) == len(escalated) > 0
    assert {s["pipeline"] for s in steps} == {"triage-always-escalate"}
    assert sorted(s["specialist"] for s in steps) == sorted(s["specialist"] for s in escalated)
    assert {(s["escalated_from"], s["escalation_reason"]) for s in steps} == {("smol", "low_confidence")}
    assert not marked(records, plain_marker)  # big called directly: nothing on its path opted in

    segments = segment_paths(usage_log_keys()[2])
    assert segments and not any(email.encode() in path.read_bytes() for path in segments)


def test_inspect_counts_the_fleets_log_with_the_key(fleet):
    private_path, _, _ = usage_log_keys()
    command = ["convert", "inspect", "--spec", str(fleet.spec), "--key", str(private_path)]
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "records" in done.stdout and "escalation_reason: " in done.stdout and "low_confidence" in done.stdout
