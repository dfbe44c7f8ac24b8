"""Adapter specs and files: a wrong adapter is a spec error naming the field path, the value and the fix.

Adapters here are written directly (peft's adapter_config.json and a safetensors file of the right or wrong shapes),
against a Llama-shaped base config.json (SmolLM2-135M's published values), so no model or peft is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from cluster.adapter_files import (
    AdapterFileError,
    adapter_file_issues,
    check_adapter_folder,
    local_adapter_notes,
    safetensors_shapes,
)
from cluster.cli import local_state_path, main
from cluster.memory import estimate_engine_memory, lora_values_per_rank
from cluster.model_store import bundled_folder
from cluster.spec import ModelSpec, parse_spec
from cluster.spec_errors import SpecError

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
PREFIX = "base_model.model.model.layers"


INSTRUCT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the bundled model, as a hub id


def write_adapter(
    folder: Path, *, rank: int = 8, hidden: int = 576, layers: int = 2, peft_type: str = "LORA", base: str = INSTRUCT
) -> Path:
    """A peft-shaped LoRA on q_proj and v_proj (v out = 3 KV heads x 64 = 192 when hidden is 576)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": peft_type,
        "r": rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    kv_out = hidden // 3
    tensors = {}
    for layer in range(layers):
        tensors[f"{PREFIX}.{layer}.self_attn.q_proj.lora_A.weight"] = np.zeros((rank, hidden), np.float32)
        tensors[f"{PREFIX}.{layer}.self_attn.q_proj.lora_B.weight"] = np.zeros((hidden, rank), np.float32)
        tensors[f"{PREFIX}.{layer}.self_attn.v_proj.lora_A.weight"] = np.zeros((rank, hidden), np.float32)
        tensors[f"{PREFIX}.{layer}.self_attn.v_proj.lora_B.weight"] = np.zeros((kv_out, rank), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def lora_model(rank: int = 16, source: str = "bundled:smollm2-135m-instruct") -> ModelSpec:
    return ModelSpec(source=source, lora={"max_lora_rank": rank})


def test_a_fitting_adapter_passes_and_its_shapes_come_from_the_header(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ok")
    check_adapter_folder(folder, lora_model(), SMOLLM2_135M)
    shapes = safetensors_shapes(folder / "adapter_model.safetensors")
    assert shapes[f"{PREFIX}.1.self_attn.v_proj.lora_B.weight"] == [192, 8]


@pytest.mark.parametrize(
    ("make", "rank", "words"),
    [
        (lambda p: p / "absent", 16, "no folder at"),
        (lambda p: (p / "empty").mkdir() or p / "empty", 16, "has no adapter_config.json"),
        (lambda p: write_adapter(p / "ia3", peft_type="IA3"), 16, "only LoRA adapters"),
        (lambda p: write_adapter(p / "r32", rank=32), 16, "rank is 32, above the model's max_lora_rank 16"),
        (lambda p: write_adapter(p / "narrow", hidden=64), 16, f"trained on {INSTRUCT}, not this base model"),
        (
            lambda p: write_adapter(p / "other-base", base="HuggingFaceTB/SmolLM2-135M"),  # same shapes
            16,
            "names HuggingFaceTB/SmolLM2-135M as its base model, not this model",
        ),
        (lambda p: write_adapter(p / "deep", layers=31), 16, "layer 30, the base model has 30 layers"),
    ],
)
def test_an_adapter_that_cannot_run_on_the_model_says_why(tmp_path: Path, make, rank: int, words: str) -> None:
    with pytest.raises(AdapterFileError, match=words):
        check_adapter_folder(make(tmp_path), lora_model(rank), SMOLLM2_135M)


def test_without_the_base_config_only_the_rank_and_config_are_checked(tmp_path: Path) -> None:
    check_adapter_folder(write_adapter(tmp_path / "narrow", hidden=64), lora_model(), None)


@pytest.mark.parametrize(
    "recorded",
    [
        INSTRUCT,
        "/srv/models/smollm2-135m-instruct/",
        "bundled:smollm2-135m-instruct",
        str(bundled_folder("smollm2-135m-instruct", Path("/home/me/.cache/slm-fleet"))),  # trained on our copy
    ],
)
def test_the_recorded_base_matches_the_model_by_its_name_wherever_it_was_loaded_from(tmp_path, recorded) -> None:
    check_adapter_folder(write_adapter(tmp_path / "a", base=recorded), lora_model(), SMOLLM2_135M)


def test_trained_on_vouches_for_a_base_recorded_under_another_name(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "renamed", base="/data/checkpoints/run-17")
    with pytest.raises(AdapterFileError, match="names /data/checkpoints/run-17 as its base model"):
        check_adapter_folder(folder, lora_model(), SMOLLM2_135M)
    check_adapter_folder(folder, lora_model(), SMOLLM2_135M, trained_on="/data/checkpoints/run-17")


def spec_with(specialists: dict, lora: dict | None = None, pools: dict | None = None) -> dict:
    model: dict = {"source": "bundled:smollm2-135m-instruct"}
    if lora is not None:
        model["lora"] = lora
    data: dict = {"models": {"smol": model}, "specialists": specialists}
    if pools:
        data["pools"] = pools
        model["pool"] = next(iter(pools))
    return data


def test_an_adapter_on_a_model_without_lora_is_a_spec_error_with_the_fix() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with({"tuned": {"model": "smol", "adapter": {"source": "/x"}}}))
    text = str(err.value)
    assert "specialists.tuned.adapter" in text and "has no LoRA capacity" in text
    assert "add 'lora: {max_loras: 4, max_lora_rank: 16}' to models.smol" in text


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("adapter", {"source": "http://host/a"}, "unknown scheme"),
        ("adapter", {"source": "/a", "version": "a b"}, "should match pattern"),
        ("lora", {"max_lora_rank": 12}, "Input should be 1, 8, 16"),
        ("lora", {"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras (2) is below max_loras (4)"),
    ],
)
def test_bad_adapter_and_lora_fields_name_their_path(field: str, value: dict, words: str) -> None:
    specialist = {"model": "smol", "adapter": value if field == "adapter" else {"source": "/a"}}
    data = spec_with({"tuned": specialist}, lora=value if field == "lora" else {})
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert words in str(err.value)
    assert ("specialists.tuned.adapter" if field == "adapter" else "models.smol.lora") in str(err.value)


def test_file_issues_point_at_the_source_field(tmp_path: Path) -> None:
    write_adapter(tmp_path / "r32", rank=32)
    spec = parse_spec(
        spec_with(
            {
                "big-rank": {"model": "smol", "adapter": {"source": str(tmp_path / "r32")}},
                "remote": {"model": "smol", "adapter": {"source": "s3://bucket/tuned"}},  # checked when fetched
                "uri": {"model": "smol", "adapter": {"source": f"file://{tmp_path / 'nope'}"}},
            },
            lora={"max_lora_rank": 16},
        )
    )
    issues = {issue.path: issue for issue in adapter_file_issues(spec)}
    assert set(issues) == {"specialists.big-rank.adapter.source", "specialists.uri.adapter.source"}
    assert "raise the model's lora.max_lora_rank" in issues["specialists.big-rank.adapter.source"].fix


def test_an_adapter_of_another_base_is_a_spec_error_whose_fix_names_trained_on(tmp_path: Path) -> None:
    write_adapter(tmp_path / "base-model", base="HuggingFaceTB/SmolLM2-135M")
    adapter = {"source": str(tmp_path / "base-model")}
    spec = parse_spec(spec_with({"tuned": {"model": "smol", "adapter": adapter}}, lora={"max_lora_rank": 16}))
    (issue,) = adapter_file_issues(spec)
    assert issue.path == "specialists.tuned.adapter.source"
    assert "set adapter.trained_on: 'HuggingFaceTB/SmolLM2-135M'" in issue.fix
    vouched = {**adapter, "trained_on": "HuggingFaceTB/SmolLM2-135M"}
    spec = parse_spec(spec_with({"tuned": {"model": "smol", "adapter": vouched}}, lora={"max_lora_rank": 16}))
    assert adapter_file_issues(spec) == []


def test_validate_exits_2_with_the_report_and_warns_about_local_paths_on_many_nodes(tmp_path: Path, capsys) -> None:
    write_adapter(tmp_path / "ok")
    pools = {"l4": {"accelerator": "L4", "gpus_per_node": 1, "gpu_memory_gib": 24, "max_nodes": 3}}
    good = spec_with({"tuned": {"model": "smol", "adapter": {"source": str(tmp_path / "ok")}}}, {}, pools)
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    assert main(["validate", str(tmp_path / "good.yaml")]) == 0
    err = capsys.readouterr().err
    assert "warning: specialists.tuned.adapter.source" in err and "must exist on every node" in err
    bad = spec_with({"tuned": {"model": "smol", "adapter": {"source": str(tmp_path / "none")}}}, {})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["validate", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "specialists.tuned.adapter.source: no folder at" in err and "Traceback" not in err
    assert local_adapter_notes(parse_spec(bad)) == []  # one node: nothing to warn about


def test_lora_slots_enter_the_memory_estimate() -> None:
    plain = estimate_engine_memory("smol", ModelSpec(source="x", dtype="float32"), SMOLLM2_135M)
    tuned = estimate_engine_memory(
        "smol", ModelSpec(source="x", dtype="float32", lora={"max_loras": 4, "max_lora_rank": 16}), SMOLLM2_135M
    )
    # 30 layers x (q 1152 + k 768 + v 768 + o 1152 + gate 2112 + up 2112 + down 2112) per rank, 4 slots x rank 16
    per_rank = 30 * (1152 + 768 + 768 + 1152 + 2112 * 3)
    assert lora_values_per_rank(SMOLLM2_135M, 0) == per_rank
    assert tuned.lora_gib == pytest.approx(per_rank * 64 * 4 / 1024**3)
    assert tuned.total_gib > plain.total_gib and plain.lora_gib == 0
    assert tuned.to_dict()["lora_gib"] == round(tuned.lora_gib, 3)


def test_up_keeps_a_local_fleets_state_in_one_file_per_spec(tmp_path: Path, monkeypatch) -> None:
    """Registrations survive a restart of `slmfleet up` of the same spec: its state actor snapshots to that file."""
    import deployments.local_run

    seen: dict = {}
    monkeypatch.setattr(deployments.local_run, "run_local", lambda spec, **kwargs: seen.update(kwargs) or 0)
    monkeypatch.setenv("SLMFLEET_HOME", str(tmp_path / "home"))
    spec = tmp_path / "fleet.yaml"
    spec.write_text(yaml.safe_dump(spec_with({})))
    monkeypatch.chdir(tmp_path)
    assert main(["up", "--spec", "fleet.yaml"]) == 0
    assert seen["state_path"] == str(local_state_path(str(spec))) == str(local_state_path("fleet.yaml"))
    assert Path(seen["state_path"]).parent == tmp_path / "home" / "state"
    assert local_state_path(str(tmp_path / "other.yaml")) != local_state_path(str(spec))
    assert main(["up", "--spec", "fleet.yaml", "--state", "/elsewhere.json"]) == 0
    assert seen["state_path"] == "/elsewhere.json"
