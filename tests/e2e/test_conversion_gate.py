"""S4-S6 of the conversion loop on the real fleet: the fleet's SLM fails a task zero-shot (so the task is marked
for training), a LoRA adapter trained on the good LLM's answers (the traffic generator's, which knows each right
answer) passes the gate on held-out examples and serves as a specialist with no restart, and an adapter that has
learned nothing is removed again, leaving routing as it was."""

import httpx
import pytest
import yaml

from cluster.convert.candidates import choose_for_tasks
from cluster.convert.evaluate import fleet_answerer
from cluster.convert.finetune import TrainSettings, train_adapter
from cluster.convert.gate import AdminClient, gate_adapter, publish_adapter
from cluster.convert.task_data import split_task
from cluster.spec import parse_spec
from tests.adapters import bundled_base, make_adapter
from tests.conversion_traffic import TrafficGenerator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def generated_task(count: int) -> tuple[dict, list[dict]]:
    prompts = TrafficGenerator(seed=11).prompts(count, ("intent",))
    examples = [
        {"request_id": f"g{i}", "messages": p.messages, "instructions": None, "answer": p.answer, "tokens_out": 4}
        for i, p in enumerate(prompts)
    ]
    task = {"id": 0, "name": "intent-grown", "size": count, "members": [e["request_id"] for e in examples]}
    return task, examples


def test_a_trained_adapter_passes_the_gate_and_one_that_learned_nothing_is_removed(fleet, tmp_path):
    data = yaml.safe_load(fleet.spec.read_text())
    data["models"].pop("cold")  # a scale-to-zero SLM: scoring it would wake it for nothing here
    data["specialists"] = {n: s for n, s in data["specialists"].items() if s["model"] != "cold"}
    spec = parse_spec(data)

    def answerer(name):
        return fleet_answerer(f"{fleet.url}/v1", name)

    task, examples = generated_task(28)
    train, held_out = split_task(examples, task["members"])
    (decision,) = choose_for_tasks(spec, [task], examples, answerer, llm_validity=1.0)
    assert decision["decision"] == "train" and decision["base_model"] == "smol", decision
    assert decision["scores"]["smol"]["agreement"] < 0.5

    metrics = train_adapter(bundled_base(), train, tmp_path / "intent-grown", TrainSettings(steps=24))
    assert metrics["loss_last"] < metrics["loss_first"] / 4, metrics
    admin = AdminClient(fleet.url)
    try:
        verdict = gate_adapter(
            admin, answerer, decision, publish_adapter(tmp_path / "intent-grown", "intent-grown", None), held_out
        )
        assert verdict["kept"], verdict
        assert verdict["adapter_score"]["agreement"] >= verdict["base"]["agreement"] + 0.5, verdict
        listed = httpx.get(f"{fleet.url}/admin/adapters", timeout=30).json()
        assert "intent-grown" in str(listed)

        blank = make_adapter(tmp_path / "random", seed=99)  # random weights: changes answers, learned nothing
        rejected = gate_adapter(
            admin,
            answerer,
            {**decision, "name": "intent-random"},
            publish_adapter(blank, "intent-random", None),
            held_out,
        )
        assert not rejected["kept"], rejected
        gone = httpx.post(
            f"{fleet.url}/v1/chat/completions",
            json={"model": "intent-random", "messages": held_out[0]["messages"], "max_tokens": 4},
            timeout=60,
        )
        assert gone.status_code == 404, gone.text
    finally:
        admin.remove("intent-grown")
        admin.remove("intent-random")
