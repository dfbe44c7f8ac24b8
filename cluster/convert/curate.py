"""S2, curation: the usage log's records made fit to learn from, with PII removed before anything is written.

The sealed log is read in memory with the private key; what leaves this stage is only the curated examples and a
report of counts. A record is dropped when its call failed (no answer), when its answer breaks the contract or
tool schemas it was asked under (the same check the router applies, ``cluster.escalation.check_output``), or when,
once scrubbed, it repeats an example already kept. Text is scrubbed in every place a value can hide: messages,
answers and tool-call arguments (the specialist's instructions come from the spec, not from users, and are kept).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cluster.convert.evaluate import contract_view
from cluster.convert.pii import PiiScrubber
from cluster.escalation import check_output

CURATED_FILE = "curated.jsonl"
REPORT_FILE = "curation-report.json"


@dataclass
class CurationReport:
    """What curation kept and removed, by kind: counts only."""

    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # failed | invalid | duplicate
    pii: Counter[str] = field(default_factory=Counter)  # name | email | phone | card | ip | street_address

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "dropped": dict(self.dropped), "pii_removed": dict(self.pii)}


def answer_problem(record: dict[str, Any]) -> str | None:
    """Why a logged answer is not an example to learn from (None: it is)."""
    if record.get("error"):
        return "failed"
    contract = record.get("contract")
    tools = record.get("tools")
    result = SimpleNamespace(
        text=record.get("answer") or "",
        finish_reason=record.get("finish_reason"),
        tool_calls=[SimpleNamespace(**call) for call in record.get("tool_calls") or []],
    )
    check = check_output(result, contract_view(contract), _ToolsView(tools) if tools else None)
    return None if check.ok else "invalid"


class _ToolsView:
    """A logged ``tools`` entry as ``check_output`` reads tools (``deployments.protocol.Tools``' two members)."""

    def __init__(self, tools: dict[str, Any]) -> None:
        self.choice = tools["choice"]
        self.tools = {t["name"]: t["parameters"] for t in tools["tools"]}

    @property
    def call_required(self) -> bool:
        return self.choice not in ("none", "auto")

    def schemas(self) -> dict[str, dict[str, Any]]:
        if self.choice == "none":
            return {}
        if self.choice in ("auto", "required"):
            return self.tools
        return {name: schema for name, schema in self.tools.items() if name == self.choice}


def _scrub_messages(messages: list[dict[str, Any]], scrub: Any) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts: scrub each text part
            content = [{**part, "text": scrub(part["text"])} if "text" in part else part for part in content]
        elif isinstance(content, str):
            content = scrub(content)
        out.append({**message, "content": content})
    return out


def curated_example(record: dict[str, Any], scrubber: PiiScrubber, report: CurationReport) -> dict[str, Any]:
    """The record's task and answer with PII replaced, and the fields later stages need (model, cost, tokens)."""

    def scrub(text: str) -> str:
        clean, counts = scrubber.scrub(text)
        report.pii.update(counts)
        return clean

    def scrub_json(text: str) -> str:
        clean, counts = scrubber.scrub_json(text)
        report.pii.update(counts)
        return clean

    return {
        "request_id": record["request_id"],
        "model": record["model"],
        "specialist": record["specialist"],
        "pipeline": record["pipeline"],
        "escalated_from": record["escalated_from"],
        "escalation_reason": record["escalation_reason"],
        "instructions": record["instructions"],
        "messages": _scrub_messages(record["messages"], scrub),
        "tools": record["tools"],
        "contract": record["contract"],
        "answer": scrub_json(record["answer"] or ""),
        "tool_calls": [{**call, "arguments": scrub_json(call["arguments"])} for call in record["tool_calls"]],
        "tokens_in": record["tokens_in"],
        "tokens_out": record["tokens_out"],
        "cost": record["cost"],
    }


def _example_key(example: dict[str, Any]) -> str:
    task = {k: example[k] for k in ("instructions", "messages", "tools", "contract", "answer", "tool_calls")}
    return json.dumps(task, sort_keys=True)


Scrubbed = tuple[str | None, dict[str, Any] | None, Counter[str]]
"""One record's fate: why it is dropped (None: kept), its scrubbed example, and the PII found in it."""


def scrub_record(record: dict[str, Any], scrubber: PiiScrubber) -> Scrubbed:
    """The per-record work of curation (checked, then scrubbed): independent of every other record, so a cluster
    can share it out (``cluster.convert.batch``)."""
    problem = answer_problem(record)
    if problem is not None:
        return problem, None, Counter()
    found = CurationReport()
    return None, curated_example(record, scrubber, found), found.pii


def collect(results: Iterable[Scrubbed]) -> tuple[list[dict[str, Any]], CurationReport]:
    """The kept examples without repeats (the first of each kept, in log order), and the report of what went."""
    report = CurationReport()
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    for problem, example, pii in results:
        report.read += 1
        if example is None:  # scrub_record gives none exactly when it names a problem
            report.dropped[problem or "failed"] += 1
            continue
        report.pii.update(pii)
        key = _example_key(example)
        if key in seen:
            report.dropped["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(example)
    report.kept = len(kept)
    return kept, report


def curate(records: Iterable[dict[str, Any]], scrubber: PiiScrubber) -> tuple[list[dict[str, Any]], CurationReport]:
    """The examples worth learning from, scrubbed and without repeats, and the report of what was removed."""
    return collect(scrub_record(record, scrubber) for record in records)


def write_curated(folder: Path, examples: list[dict[str, Any]], report: CurationReport) -> None:
    """``curated.jsonl`` and ``curation-report.json`` in ``folder`` (the only files this stage writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CURATED_FILE, "w") as out:
        for example in examples:
            out.write(json.dumps(example, sort_keys=True) + "\n")
    (folder / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")


def read_curated(folder: Path) -> Iterator[dict[str, Any]]:
    with open(folder / CURATED_FILE) as lines:
        for line in lines:
            yield json.loads(line)
