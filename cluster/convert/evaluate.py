"""How a candidate does on a task's held-out slice, against the LLM's answers: contract validity and agreement.

Agreement is judged by the task's contract: for JSON, the parsed values must be equal; otherwise the texts must
match once case, surrounding space and a final full stop are set aside. Validity is the router's own check
(``cluster.escalation.check_contract``). Candidates are called through the fleet's OpenAI API, so a candidate is
scored exactly as it would serve: the same engine, the same prompt shaping, the same constrained decoding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

from cluster.chat_messages import with_instructions
from cluster.escalation import check_contract

Answer = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Score:
    examples: int
    validity: float
    agreement: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def contract_view(contract: dict[str, Any] | None) -> Any:
    """A logged contract (``{json_schema, choice, regex}``, some unset) as the router's checks read contracts."""
    return SimpleNamespace(**{"json_schema": None, "choice": None, "regex": None, **contract}) if contract else None


def is_valid(answer: str, example: dict[str, Any]) -> bool:
    return check_contract(answer, "stop", contract_view(example.get("contract"))).ok


def _normal(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


def agrees(answer: str, example: dict[str, Any]) -> bool:
    """Whether ``answer`` says what the LLM said for this example."""
    reference = example["answer"]
    try:
        return json.loads(answer) == json.loads(reference)
    except ValueError:
        return _normal(answer) == _normal(reference)


def score(answers: list[str], examples: list[dict[str, Any]]) -> Score:
    if not examples:
        return Score(0, 0.0, 0.0)
    valid = sum(is_valid(a, e) for a, e in zip(answers, examples, strict=True))
    agree = sum(agrees(a, e) for a, e in zip(answers, examples, strict=True))
    return Score(len(examples), round(valid / len(examples), 4), round(agree / len(examples), 4))


def request_of(example: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat request that asks ``model`` the example's task as the LLM was asked it (instructions included, the
    JSON contract as a response format so constrained decoding applies as it would in production)."""
    messages = with_instructions(example["messages"], example.get("instructions") or "")
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": _room(example)}
    contract = example.get("contract") or {}
    if contract.get("json_schema") is not None:
        schema = {"name": "answer", "schema": contract["json_schema"]}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return body


def _room(example: dict[str, Any]) -> int:
    """Twice the LLM's answer length and some slack: enough to agree, not enough to ramble for long."""
    return max(16, 2 * int(example.get("tokens_out") or 32) + 8)


def fleet_answerer(base_url: str, model: str, api_key: str = "unused-on-loopback", timeout_s: float = 120) -> Answer:
    """Answers from ``model`` (a model or specialist name) on the fleet at ``base_url`` (its ``/v1``)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=timeout_s)

    def answer(example: dict[str, Any]) -> str:
        reply = client.chat.completions.create(**request_of(example, model))
        return reply.choices[0].message.content or ""

    return answer


def evaluate(answer: Answer, examples: list[dict[str, Any]]) -> Score:
    return score([answer(example) for example in examples], examples)


@dataclass(frozen=True)
class Candidate:
    """A served name (an SLM, or an existing specialist) with its price and its held-out score."""

    name: str
    price_per_1k: float
    score: Score


def choose(candidates: list[Candidate], llm_validity: float, min_agreement: float) -> Candidate | None:
    """S4's rule: the cheapest candidate at the LLM's contract validity and at least ``min_agreement``; None means
    no candidate is good enough zero-shot, so the task is trained."""
    good = [c for c in candidates if c.score.validity >= llm_validity and c.score.agreement >= min_agreement]
    return min(good, key=lambda c: (c.price_per_1k, -c.score.agreement, c.name)) if good else None
