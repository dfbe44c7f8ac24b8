"""S5 as a Ray task: the adapter trained on a (private, local) Ray cluster comes back as files, matching the one
trained here from the same examples and seed, and a second run here repeats the first byte for byte."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from cluster.convert.finetune import CARD_FILE, TrainSettings, train_adapter, train_on_ray, write_model_card
from tests.adapters import BUNDLED_NAME, bundled_base
from tests.conversion_traffic import TrafficGenerator
from tests.integration.local_ray import private_ray

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_training_on_ray_matches_training_here(tmp_path):
    prompts = TrafficGenerator(seed=5).prompts(4, ("intent", "sentiment"))
    examples = [{"request_id": f"r{i}", "messages": p.messages, "answer": p.answer} for i, p in enumerate(prompts)]
    settings = TrainSettings(steps=3, batch_size=2)
    here = train_adapter(bundled_base(), examples, tmp_path / "here", settings)
    with private_ray("sft", num_cpus=2):
        remote = train_on_ray("auto", f"bundled:{BUNDLED_NAME}", examples, tmp_path / "ray", gpus=0, settings=settings)
    assert remote["steps"] == here["steps"] == 3 and remote["examples"] == 8
    assert remote["loss_first"] == here["loss_first"]
    weights = "adapter_model.safetensors"
    again = train_adapter(bundled_base(), examples, tmp_path / "again", settings)
    assert {**again, "seconds": 0} == {
        **here,
        "seconds": 0,
    }  # fixed seeds: the same run twice gives the same adapter, byte for byte
    assert (tmp_path / "again" / weights).read_bytes() == (tmp_path / "here" / weights).read_bytes()
    # on Ray, torch runs on one thread and sums in another order: the same losses, weights equal up to rounding
    # (which Adam's normalisation lifts to a few percent in the smallest entries)
    assert remote["loss_last"] == pytest.approx(here["loss_last"], rel=1e-3)
    ray_weights, local_weights = load_file(tmp_path / "ray" / weights), load_file(tmp_path / "here" / weights)
    assert ray_weights.keys() == local_weights.keys()
    for key, local in local_weights.items():
        assert float((ray_weights[key] - local).abs().max()) <= 0.15 * float(local.abs().max()), key
    assert all(ray_weights[k].abs().sum() > 0 for k in ray_weights if "lora_B" in k)  # trained: B starts at zero
    task = {"id": 3, "name": "intent", "size": 8}
    write_model_card(tmp_path / "ray", task, f"bundled:{BUNDLED_NAME}", remote)
    card = (tmp_path / "ray" / CARD_FILE).read_text()
    assert "trained on 8 examples" in card and "seed 0" in card and "3 steps" in card
