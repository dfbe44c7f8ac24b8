"""The usage log (S1 of the conversion loop): sealed segments only the private key reads, a writer that never makes
a request wait, and the spec's opt-in deciding which calls are recorded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.convert.log_files import summarize_log
from cluster.convert.sealed_log import (
    SealedLogError,
    SegmentWriter,
    generate_key_pair,
    load_private_key,
    parse_public_key,
    read_segment,
    segment_paths,
    summarize_segment,
)
from cluster.convert.usage_scope import is_logged, log_destination
from cluster.cost import PriceBook
from cluster.spec import FleetSpec, UsageLogSpec, parse_spec
from cluster.spec_errors import SpecError
from deployments.protocol import Contract, GenerationRequest, GenerationResult
from deployments.router.usage_log import UsageLog, UsageRecorder, usage_record

pytestmark = pytest.mark.timeout(60)
PLANTED = "alice.smith@example.com"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, str]:
    return generate_key_pair(tmp_path_factory.mktemp("keys"))


def settings(public: str, folder: Path, **extra) -> UsageLogSpec:
    return UsageLogSpec(public_key=public, destination=str(folder), **extra)


def record(n: int) -> dict:
    return {"n": n, "messages": [{"role": "user", "content": f"mail {PLANTED} about order {n}"}]}


def test_records_read_back_only_with_the_private_key(tmp_path, keys):
    private_path, public = keys
    log = UsageLog(settings(public, tmp_path / "log"), "router-a", home=tmp_path)
    for n in range(3):
        assert log.record(record(n))
    log.close()
    [segment] = segment_paths(tmp_path / "log")
    assert segment.parent.name == "router-a"
    assert PLANTED.encode() not in segment.read_bytes()
    assert list(read_segment(segment, load_private_key(private_path))) == [record(n) for n in range(3)]
    _, other_public = generate_key_pair(tmp_path / "other")
    with pytest.raises(SealedLogError, match="not to this key"):
        next(read_segment(segment, load_private_key(tmp_path / "other" / "usage-log.key")))
    assert other_public != public


def test_an_altered_frame_is_refused_and_a_cut_tail_is_skipped(tmp_path, keys):
    private_path, public = keys
    writer = SegmentWriter(tmp_path / "s.slog", parse_public_key(public), "router-a")
    writer.append([record(1)])
    writer.append([record(2), record(3)])
    writer.close()
    whole = (tmp_path / "s.slog").read_bytes()
    private = load_private_key(private_path)

    (tmp_path / "cut.slog").write_bytes(whole[:-5])  # the writer died mid-frame
    summary = summarize_segment(tmp_path / "cut.slog")
    assert (summary.frames, summary.truncated_tail, summary.stream) == (1, True, "router-a")
    assert list(read_segment(tmp_path / "cut.slog", private)) == [record(1)]

    altered = bytearray(whole)
    altered[-3] ^= 1
    (tmp_path / "altered.slog").write_bytes(bytes(altered))
    with pytest.raises(SealedLogError, match="frame 1 fails its seal"):
        list(read_segment(tmp_path / "altered.slog", private))


class StalledLog(UsageLog):
    """A writer whose disk hangs until released: the queue fills, and then records are dropped, never waited for."""

    release = threading.Event()

    def _write(self, writer, batch):
        self.release.wait(10)
        return super()._write(writer, batch)


def test_a_full_buffer_drops_and_counts_instead_of_waiting(tmp_path, keys):
    counts: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + n

    log = StalledLog(settings(keys[1], tmp_path / "log", buffer_records=2), "router-a", count, home=tmp_path)
    accepted = [log.record(record(0))]
    time.sleep(0.2)  # the writer thread takes the first and stalls
    started = time.perf_counter()
    accepted += [log.record(record(n)) for n in range(1, 6)]
    assert time.perf_counter() - started < 0.05
    assert accepted == [True, True, True, False, False, False]
    assert counts == {"dropped": 3}
    StalledLog.release.set()
    log.close()
    assert counts == {"dropped": 3, "written": 3}


def test_segments_close_at_their_age(tmp_path, keys):
    log = UsageLog(settings(keys[1], tmp_path / "log", segment_max_age_s=0.2), "router-a", home=tmp_path)
    log.record(record(1))
    time.sleep(0.6)
    log.record(record(2))
    log.close()
    assert len(segment_paths(tmp_path / "log")) == 2


FLEET = {
    "models": {
        "small": {"source": "bundled:smollm2-135m-instruct"},
        "big": {"source": "bundled:smollm2-135m-instruct", "tier": "llm"},
    },
    "specialists": {
        "intent": {"model": "small", "output": {"choice": ["refund", "other"]}, "instructions": "Classify."},
        "summary": {"model": "big"},
    },
    "pipelines": {"triage": {"steps": {"classify": {"specialist": "intent"}}}},
}


def fleet(public: str, **opt_in: dict) -> FleetSpec:
    data = json.loads(json.dumps(FLEET))
    for section, names in opt_in.items():
        for name in names:
            data[section][name]["log_usage"] = True
    data["usage_log"] = {"public_key": public}
    return parse_spec(data)


def test_only_opted_in_llm_tier_calls_are_logged(keys):
    plain = fleet(keys[1])
    assert not is_logged(plain, "big", None, None, None)  # nothing opted in
    by_model = fleet(keys[1], models=["big"])
    assert is_logged(by_model, "big", None, None, None)
    assert not is_logged(by_model, "small", None, None, None)  # SLM answers are never recorded
    by_specialist = fleet(keys[1], specialists=["summary"])
    assert is_logged(by_specialist, "big", "summary", None, None)
    assert not is_logged(by_specialist, "big", None, None, None)
    by_pipeline = fleet(keys[1], pipelines=["triage"])
    assert is_logged(by_pipeline, "big", "intent", "triage", "small")
    assert not is_logged(by_pipeline, "big", "intent", None, "small")
    escalated = fleet(keys[1], models=["small"])  # an SLM opting in: its escalated calls, with their reason
    assert is_logged(escalated, "big", "intent", None, "small")
    assert not is_logged(escalated, "big", None, None, None)


def test_log_usage_without_a_log_names_the_field_and_the_fix():
    data = json.loads(json.dumps(FLEET))
    data["pipelines"]["triage"]["log_usage"] = True
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    text = str(caught.value)
    assert "pipelines.triage.log_usage" in text and "slmfleet convert keygen" in text


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("public_key", "ssh-rsa AAAA", "not a usage-log public key"),
        ("destination", "logs/usage", "absolute folder"),
        ("buffer_records", 0, "greater than or equal to 1"),
    ],
)
def test_bad_usage_log_settings_name_their_path(keys, field, value, words):
    data = {**json.loads(json.dumps(FLEET)), "usage_log": {"public_key": keys[1], field: value}}
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    assert f"usage_log.{field}" in str(caught.value) and words in str(caught.value)


def test_default_destination_is_under_the_fleet_home(tmp_path, keys):
    assert log_destination(UsageLogSpec(public_key=keys[1]), tmp_path) == str(tmp_path / "usage-log")
    assert log_destination(UsageLogSpec(public_key=keys[1], destination="file:///var/log/u")) == "/var/log/u"


def test_a_record_holds_the_task_the_answer_and_the_cost(keys):
    spec = fleet(keys[1], models=["small"])
    request = GenerationRequest(
        "r1",
        [{"role": "user", "content": "I want my money back"}],
        specialist="intent",
        specialist_spec=spec.specialists["intent"],
        escalated_from="small",
        escalation_reason="contract",
    )
    result = GenerationResult(model="big", text="refund", finish_reason="stop", prompt_tokens=30, completion_tokens=2)
    prices = PriceBook({"big": 0.001})
    entry = usage_record("big", request, result, "", prices)
    assert entry["instructions"] == "Classify."
    assert entry["contract"] == {"json_schema": None, "choice": ("refund", "other"), "regex": None}
    assert (entry["escalated_from"], entry["escalation_reason"]) == ("small", "contract")
    assert (entry["answer"], entry["tokens_in"], entry["tokens_out"]) == ("refund", 30, 2)
    assert entry["cost"] == pytest.approx(prices.cost("big", 32))
    assert entry["pipeline"] is None and entry["error"] is None

    captured: list[dict] = []

    class Capture:
        def record(self, item: dict) -> bool:
            captured.append(item)
            return True

    recorder = UsageRecorder(spec, prices, Capture())  # type: ignore[arg-type]
    recorder("big", request, result, "")
    recorder("small", request, result, "")  # the SLM's own answer: not recorded
    recorder("big", GenerationRequest("r2", [], contract=Contract(regex="x")), result, "")  # nothing opted in
    assert [c["request_id"] for c in captured] == ["r1"]


def test_cli_keygen_then_inspect_counts_without_showing_content(tmp_path, capsys):
    assert main(["convert", "keygen", "--out", str(tmp_path / "k")]) == 0
    public = (tmp_path / "k" / "usage-log.pub").read_text().strip()
    assert public in capsys.readouterr().out
    assert main(["convert", "keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites a key
    log = UsageLog(settings(public, tmp_path / "log"), "router-a", home=tmp_path)
    for n in range(4):
        log.record({**record(n), "model": "big", "specialist": None, "pipeline": "triage", "cost": 0.5} | _no_error())
    log.close()
    spec_path = tmp_path / "fleet.yaml"
    usage_log = {"public_key": public, "destination": str(tmp_path / "log")}
    spec_path.write_text(json.dumps({**FLEET, "usage_log": usage_log}))
    assert main(["convert", "inspect", "--spec", str(spec_path), "--json"]) == 0
    keyless = json.loads(capsys.readouterr().out)
    assert (keyless["streams"], keyless["segments"], keyless["frames"]) == (1, 1, 1) and "records" not in keyless
    key = str(tmp_path / "k" / "usage-log.key")
    assert main(["convert", "inspect", "--spec", str(spec_path), "--key", key]) == 0
    shown = capsys.readouterr().out
    assert "4 records, cost 2.0" in shown and "pipeline: triage 4" in shown and PLANTED not in shown
    assert summarize_log(str(tmp_path / "log"), tmp_path, None)["bytes"] > 0


def _no_error() -> dict:
    return {"escalation_reason": None, "error": None}
