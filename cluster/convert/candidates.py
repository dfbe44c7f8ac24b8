"""S4, candidate choice: for each accepted task, the fleet's SLMs (and the specialists that already promise the
task's contract) answer its held-out slice zero-shot; the cheapest that matches the LLM's contract validity and
the agreement threshold serves the task as it is, otherwise the task is trained on the cheapest SLM with LoRA
slots. The decisions go to ``choices.json`` for the next stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.convert.evaluate import Answer, Candidate, choose, evaluate
from cluster.convert.task_data import split_task
from cluster.cost import PriceBook
from cluster.spec import FleetSpec

CHOICES_FILE = "choices.json"
MIN_AGREEMENT = 0.9


def candidate_names(spec: FleetSpec, task_contract: dict[str, Any] | None) -> list[str]:
    """The SLMs, and the specialists on SLMs whose output contract is the task's."""
    task_contract = _contract_of(task_contract)
    slms = [name for name, model in spec.models.items() if model.tier == "slm"]
    same = [
        name
        for name, s in spec.specialists.items()
        if s.model in slms and s.output is not None and _contract_of(s.output.model_dump()) == task_contract
    ]
    return slms + same


def _contract_of(contract: dict[str, Any] | None) -> dict[str, Any] | None:
    if not contract:
        return None
    kept = {k: (list(v) if isinstance(v, tuple) else v) for k, v in contract.items() if v is not None}
    return kept or None


def training_base(spec: FleetSpec, prices: PriceBook) -> str | None:
    """The cheapest SLM that can serve adapters (it has ``lora:``)."""
    able = [name for name, m in spec.models.items() if m.tier == "slm" and m.lora is not None]
    return min(able, key=lambda name: (prices.per_1k.get(name) or 0.0, name)) if able else None


def _price(spec: FleetSpec, prices: PriceBook, name: str) -> float:
    model = spec.specialists[name].model if name in spec.specialists else name
    return prices.per_1k.get(model) or 0.0


def choose_for_tasks(
    spec: FleetSpec,
    tasks: list[dict[str, Any]],
    examples: list[dict[str, Any]],
    answerer: Callable[[str], Answer],
    *,
    llm_validity: float,
    min_agreement: float = MIN_AGREEMENT,
) -> list[dict[str, Any]]:
    """Each task's decision (serve by a candidate, or train on a base) with every candidate's held-out score."""
    prices = PriceBook.from_spec(spec)
    decisions = []
    for task in tasks:
        train, held_out = split_task(examples, task["members"])
        contract = held_out[0].get("contract") if held_out else None
        scored = [
            Candidate(name, _price(spec, prices, name), evaluate(answerer(name), held_out))
            for name in candidate_names(spec, contract)
        ]
        winner = choose(scored, llm_validity, min_agreement)
        base = training_base(spec, prices)
        decision = "serve" if winner else ("train" if base else "no_base")
        decisions.append(
            {
                "id": task["id"],
                "name": task["name"],
                "decision": decision,
                "serve_by": winner.name if winner else None,
                "base_model": None if winner else base,
                "train_examples": len(train),
                "held_out_examples": len(held_out),
                "llm_validity": llm_validity,
                "scores": {c.name: c.score.as_dict() for c in scored},
            }
        )
    return decisions


def llm_validity(report: dict[str, Any]) -> float:
    """The LLM tier's contract validity in the log: its answers that passed, of those that came back."""
    invalid = report["dropped"].get("invalid", 0)
    answered = report["kept"] + report["dropped"].get("duplicate", 0) + invalid
    return round(1 - invalid / answered, 4) if answered else 1.0


def write_choices(work: Path, decisions: list[dict[str, Any]]) -> None:
    (work / CHOICES_FILE).write_text(json.dumps({"tasks": decisions}, indent=2) + "\n")


def read_choices(work: Path) -> list[dict[str, Any]]:
    return json.loads((work / CHOICES_FILE).read_text())["tasks"]
