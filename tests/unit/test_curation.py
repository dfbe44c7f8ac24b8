"""S2, curation, with the real presidio and spaCy model: planted PII of every kind is gone from every file the stage
writes, failed and invalid answers and repeats are dropped, and the report counts what went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.convert.curate import CURATED_FILE, REPORT_FILE, curate
from cluster.convert.pii import PiiScrubber
from deployments.router.usage_log import UsageLog
from tests.unit.test_usage_log import FLEET, settings

pytestmark = pytest.mark.timeout(120)
PLANTED = {
    "name": "Maria Lopez",
    "email": "maria.lopez@example.com",
    "phone": "(212) 555-0188",
    "card": "4111 1111 1111 1111",
    "ip": "10.20.30.40",
    "street_address": "742 Evergreen Terrace",
}
INTENTS = {"choice": ["refund", "other"], "json_schema": None, "regex": None}
LOOKUP = {"name": "lookup", "description": "", "parameters": {"type": "object", "required": ["email"]}}


def logged(n: int, content: str, answer: str = "refund", **extra) -> dict:
    return {
        "request_id": f"r{n}",
        "model": "big",
        "specialist": "intent",
        "pipeline": None,
        "escalated_from": "small",
        "escalation_reason": "contract",
        "instructions": "Classify the message.",
        "messages": [{"role": "user", "content": content}],
        "tools": None,
        "contract": INTENTS,
        "answer": answer,
        "tool_calls": [],
        "finish_reason": "stop",
        "error": None,
        "tokens_in": 40,
        "tokens_out": 2,
        "cost": 0.01,
        **extra,
    }


def records() -> list[dict]:
    """Six logged calls: r3 repeats r2 once scrubbed, r4 breaks its contract, r5 failed."""
    p = PLANTED
    return [
        logged(1, f"I am {p['name']}, card {p['card']} was charged twice, refund it."),
        logged(2, f"Write to {p['email']} or call {p['phone']}: my parcel to {p['street_address']} never came."),
        logged(3, "Write to bo.chen@example.net or call (415) 555-0123: my parcel to 12 Baker Street never came."),
        logged(4, "What are your opening hours?", answer="opening hours"),  # not one of the choices
        logged(5, "Refund please", answer="", error="timeout"),
        logged(
            6,
            [{"type": "text", "text": f"Server {p['ip']} is down, look up my account"}],
            answer="",
            contract=None,
            tools={"choice": "required", "tools": [LOOKUP]},
            tool_calls=[{"id": "c1", "name": "lookup", "arguments": json.dumps({"email": p["email"]})}],
            finish_reason="tool_calls",
        ),
    ]


@pytest.fixture(scope="module")
def scrubber() -> PiiScrubber:
    return PiiScrubber()


def test_curation_removes_pii_failures_and_repeats(scrubber):
    examples, report = curate(records(), scrubber)
    assert [e["request_id"] for e in examples] == ["r1", "r2", "r6"]
    assert report.as_dict()["dropped"] == {"duplicate": 1, "invalid": 1, "failed": 1}
    text = json.dumps(examples)
    assert not [kind for kind, value in PLANTED.items() if value in text]
    assert set(report.pii) == set(PLANTED)  # every kind found at least once
    assert "<EMAIL_ADDRESS>" in examples[2]["tool_calls"][0]["arguments"]
    assert examples[0]["instructions"] == "Classify the message." and examples[0]["answer"] == "refund"


def test_curate_command_reads_the_sealed_log_and_writes_only_scrubbed_files(tmp_path, capsys):
    assert main(["convert", "keygen", "--out", str(tmp_path / "k")]) == 0
    public = (tmp_path / "k" / "usage-log.pub").read_text().strip()
    log = UsageLog(settings(public, tmp_path / "log"), "router-a", home=tmp_path)
    for record in records():
        log.record(record)
    log.close()
    spec = tmp_path / "fleet.yaml"
    spec.write_text(json.dumps({**FLEET, "usage_log": {"public_key": public, "destination": str(tmp_path / "log")}}))
    out = tmp_path / "curated"
    command = ["convert", "curate", "--spec", str(spec), "--key", str(tmp_path / "k" / "usage-log.key")]
    assert main([*command, "--work", str(out)]) == 0
    assert "curated 3 of 6 records" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([CURATED_FILE, REPORT_FILE])
    written = "".join(p.read_text() for p in Path(out).iterdir())
    assert not [kind for kind, value in PLANTED.items() if value in written]
    assert json.loads((out / REPORT_FILE).read_text())["pii_removed"]["card"] == 1


def test_identifiers_and_json_keys_are_not_taken_for_names(scrubber):
    text, counts = scrubber.scrub('Summarize this tool result: {"order_id": "A1002", "status": "shipped"}')
    assert '"order_id"' in text and not counts
    assert scrubber.scrub("Return JSON with keys order_id and product.")[1] == {}
    answer, counts = scrubber.scrub_json('{"order_id": "A1002", "customer": "Maria Lopez"}')
    assert json.loads(answer) == {"order_id": "A1002", "customer": "<PERSON>"} and counts == {"name": 1}


def test_phone_numbers_go_even_when_their_area_code_is_not_assigned(scrubber):
    for number in ("(399) 555-8077", "(441) 555-4450", "399-555-8077", "+1 399 555 8077"):
        text, counts = scrubber.scrub(f"Call me at {number} tomorrow.")
        assert number not in text and counts["phone"] == 1, (number, text)
