"""The loop's judgements as pure functions: held-out slices that never move, agreement by contract, S4's choice of
the cheapest good-enough candidate, and S6's gate."""

from __future__ import annotations

import json

import pytest

from cluster.convert.candidates import candidate_names, choose_for_tasks, llm_validity, training_base
from cluster.convert.evaluate import Candidate, Score, agrees, choose, request_of, score
from cluster.convert.gate import adapter_version, passes
from cluster.convert.task_data import MIN_HELD_OUT, split_task
from cluster.cost import PriceBook
from cluster.spec import parse_spec

pytestmark = pytest.mark.timeout(60)
INTENTS = {"choice": ["refund", "other"], "json_schema": None, "regex": None}
SPEC = parse_spec(
    {
        "models": {
            "tiny": {"source": "bundled:smollm2-135m-instruct", "price_per_1k_tokens": 0.0001, "lora": {}},
            "small": {"source": "bundled:smollm2-135m-instruct", "price_per_1k_tokens": 0.0004, "lora": {}},
            "nolora": {"source": "bundled:smollm2-135m-instruct", "price_per_1k_tokens": 0.00001},
            "big": {"source": "bundled:smollm2-135m-instruct", "tier": "llm", "price_per_1k_tokens": 0.01},
        },
        "specialists": {
            "intent": {"model": "small", "output": {"choice": ["refund", "other"]}},
            "shouty": {"model": "small", "output": {"choice": ["REFUND", "OTHER"]}},
        },
    }
)


def example(n: int, answer: str = "refund", contract: dict | None = INTENTS) -> dict:
    return {"request_id": f"r{n}", "messages": [{"role": "user", "content": f"m{n}"}], "answer": answer,
            "contract": contract, "instructions": "Classify.", "tokens_out": 2}  # fmt: skip


def test_held_out_slices_stay_put_as_traffic_grows():
    first = [example(n) for n in range(40)]
    train, held = split_task(first, [e["request_id"] for e in first])
    grown = first + [example(n) for n in range(40, 200)]
    _, held_later = split_task(grown, [e["request_id"] for e in grown])
    assert {e["request_id"] for e in held} <= {e["request_id"] for e in held_later}
    assert not {e["request_id"] for e in train} & {e["request_id"] for e in held_later}
    few = [example(n) for n in range(6)]
    assert len(split_task(few, [e["request_id"] for e in few])[1]) >= min(MIN_HELD_OUT, 2)


def test_agreement_follows_the_contract():
    assert agrees('{"a": 1, "b": [2]}', example(0, answer='{"b": [2], "a": 1}'))
    assert agrees(" Refund.", example(0)) and not agrees("refunds", example(0))
    scored = score(["refund", "nope", "other"], [example(0), example(1), example(2)])
    assert scored == Score(3, validity=0.6667, agreement=0.3333)


def test_a_json_task_is_asked_with_its_schema_as_response_format():
    schema = {"type": "object", "properties": {"id": {"type": "string"}}}
    body = request_of(example(0, '{"id": "A1"}', {"json_schema": schema, "choice": None, "regex": None}), "small")
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["messages"][0] == {"role": "system", "content": "Classify."} and body["temperature"] == 0.0


def test_the_cheapest_good_enough_candidate_wins_else_training():
    good, great = Score(10, 1.0, 0.9), Score(10, 1.0, 1.0)
    cheap_bad = Candidate("tiny", 0.0001, Score(10, 0.8, 1.0))  # invalid too often
    chosen = choose([cheap_bad, Candidate("small", 0.0004, great), Candidate("mid", 0.0002, good)], 1.0, 0.9)
    assert chosen is not None and chosen.name == "mid"
    assert choose([cheap_bad], 1.0, 0.9) is None


def test_candidates_are_slms_and_specialists_that_promise_the_tasks_contract():
    assert candidate_names(SPEC, INTENTS) == ["tiny", "small", "nolora", "intent"]
    assert candidate_names(SPEC, None) == ["tiny", "small", "nolora"]
    assert training_base(SPEC, PriceBook.from_spec(SPEC)) == "tiny"  # cheapest with LoRA slots


def test_choose_for_tasks_records_every_score_and_the_decision():
    examples = [example(n, answer="refund" if n % 2 else "other") for n in range(24)]
    task = {"id": 0, "name": "intent-task", "members": [e["request_id"] for e in examples]}
    right = {e["request_id"]: e["answer"] for e in examples}
    key = {json.dumps(e["messages"]): e["request_id"] for e in examples}

    def answerer(name: str):
        def answer(ex: dict) -> str:
            return right[key[json.dumps(ex["messages"])]] if name == "intent" else "refund"

        return answer

    (decision,) = choose_for_tasks(SPEC, [task], examples, answerer, llm_validity=1.0)
    assert (decision["decision"], decision["serve_by"]) == ("serve", "intent")
    assert set(decision["scores"]) == {"tiny", "small", "nolora", "intent"}
    (trained,) = choose_for_tasks(SPEC, [task], examples, answerer, llm_validity=1.0, min_agreement=1.01)
    assert (trained["decision"], trained["base_model"]) == ("train", "tiny")


def test_llm_validity_counts_answers_that_came_back():
    report = {"kept": 8, "dropped": {"invalid": 1, "duplicate": 1, "failed": 5}}
    assert llm_validity(report) == 0.9
    assert llm_validity({"kept": 0, "dropped": {}}) == 1.0


def test_the_gate_wants_better_than_base_and_as_valid_as_the_llm(tmp_path):
    base = Score(10, 1.0, 0.2)
    assert passes(Score(10, 1.0, 0.9), base, llm_validity=1.0)
    assert not passes(Score(10, 0.9, 0.9), base, llm_validity=1.0)
    assert not passes(Score(10, 1.0, 0.2), base, llm_validity=1.0)
    (tmp_path / "adapter_config.json").write_text("{}")
    first = adapter_version(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert adapter_version(tmp_path) != first
