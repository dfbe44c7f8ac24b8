"""Engine memory estimate: parameter and KV counts from real config.json values, precedence, file reading."""

from __future__ import annotations

import json

import pytest

from cluster.memory import (
    GIB,
    RUNTIME_OVERHEAD_FRACTION,
    RUNTIME_OVERHEAD_GIB,
    UnknownModelSizeError,
    count_params,
    estimate_engine_memory,
    heuristic_kv_values_per_token,
    kv_values_per_token,
    read_model_config,
)
from cluster.model_store import COMPLETE_MARKER, bundled_folder
from cluster.spec import ModelSpec

# Published config.json values (HF hub).
QWEN25_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
LLAMA32_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LLAMA31_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(
    ("config", "published_b"),
    [(QWEN25_05B, 0.494), (LLAMA32_1B, 1.236), (LLAMA31_8B, 8.030)],
)
def test_count_params_matches_published_sizes(config, published_b):
    assert count_params(config) / 1e9 == pytest.approx(published_b, rel=0.01)


def test_kv_values_per_token_from_config():
    assert kv_values_per_token(QWEN25_05B) == 2 * 24 * 2 * 64  # head_dim from hidden_size / heads
    assert kv_values_per_token(LLAMA32_1B) == 2 * 16 * 8 * 64
    assert kv_values_per_token(LLAMA31_8B) == 2 * 32 * 8 * 128


def test_kv_without_gqa_uses_attention_heads():
    config = {**LLAMA32_1B, "num_key_value_heads": None}
    assert kv_values_per_token(config) == 2 * 16 * 32 * 64


def test_nested_text_config_is_read():
    assert kv_values_per_token({"model_type": "mm", "text_config": LLAMA32_1B}) == 2 * 16 * 8 * 64


def test_moe_multiplies_mlp_only():
    dense = count_params(LLAMA32_1B)
    moe = count_params({**LLAMA32_1B, "num_local_experts": 8})
    assert moe - dense == pytest.approx(7 * 16 * 3 * 2048 * 8192)


def test_estimate_from_config_adds_weights_kv_and_overhead():
    model = ModelSpec(source="x", max_model_len=4096, concurrent_seqs=8, dtype="bfloat16")
    est = estimate_engine_memory("m", model, LLAMA31_8B)
    assert est.source == "config.json"
    assert est.weights_gib == pytest.approx(count_params(LLAMA31_8B) * 2 / GIB)
    assert est.kv_cache_gib == pytest.approx(2 * 32 * 8 * 128 * 2 * 4096 * 8 / GIB)  # 4 GiB for 32k tokens
    assert est.overhead_gib == pytest.approx(
        RUNTIME_OVERHEAD_GIB + RUNTIME_OVERHEAD_FRACTION * (est.weights_gib + est.kv_cache_gib)
    )
    assert est.total_gib == pytest.approx(est.weights_gib + est.kv_cache_gib + est.overhead_gib)


def test_config_wins_over_declared_params():
    model = ModelSpec(source="x", params_b=70.0)
    assert estimate_engine_memory("m", model, QWEN25_05B).params_b == pytest.approx(0.494, rel=0.01)


def test_declared_memory_overrides_everything():
    model = ModelSpec(source="x", params_b=70.0, memory_gib=3.5)
    est = estimate_engine_memory("m", model, LLAMA31_8B)
    assert (est.total_gib, est.source) == (3.5, "declared")


def test_float32_doubles_weights_and_kv():
    half = estimate_engine_memory("m", ModelSpec(source="x", params_b=1.0, dtype="auto"))
    full = estimate_engine_memory("m", ModelSpec(source="x", params_b=1.0, dtype="float32"))
    assert full.weights_gib == pytest.approx(2 * half.weights_gib)
    assert full.kv_cache_gib == pytest.approx(2 * half.kv_cache_gib)


def test_kv_scales_with_context_times_sequences():
    base = estimate_engine_memory("m", ModelSpec(source="x", params_b=3.0, max_model_len=2048, concurrent_seqs=4))
    double = estimate_engine_memory("m", ModelSpec(source="x", params_b=3.0, max_model_len=4096, concurrent_seqs=4))
    quad = estimate_engine_memory("m", ModelSpec(source="x", params_b=3.0, max_model_len=4096, concurrent_seqs=8))
    assert double.kv_cache_gib == pytest.approx(2 * base.kv_cache_gib)
    assert quad.kv_cache_gib == pytest.approx(4 * base.kv_cache_gib)
    assert double.weights_gib == base.weights_gib


@pytest.mark.parametrize(
    ("params_b", "real_kv_values"),
    [(0.49, 6144), (1.24, 32768), (3.09, 18432), (3.21, 57344), (7.62, 28672), (8.03, 65536), (70.6, 163840)],
)
def test_heuristic_kv_is_at_or_above_real_gqa_models(params_b, real_kv_values):
    guess = heuristic_kv_values_per_token(params_b)
    assert real_kv_values <= guess < 5 * real_kv_values


def test_unknown_size_names_the_model():
    with pytest.raises(UnknownModelSizeError, match=r"'mystery'.*params_b or memory_gib"):
        estimate_engine_memory("mystery", ModelSpec(source="bundled:x"))


def test_per_gpu_memory_splits_weights_and_kv_but_not_the_constant():
    est = estimate_engine_memory("m", ModelSpec(source="x", params_b=70.0, tier="llm"))
    assert est.per_gpu_gib(1) == pytest.approx(est.total_gib)
    four = est.per_gpu_gib(4)
    assert four > est.total_gib / 4  # the constant overhead is paid on every GPU
    assert four == pytest.approx(
        (est.weights_gib + est.kv_cache_gib) * (1 + RUNTIME_OVERHEAD_FRACTION) / 4 + RUNTIME_OVERHEAD_GIB
    )


def test_read_model_config_from_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA32_1B))
    assert read_model_config(str(tmp_path)) == LLAMA32_1B


def test_read_model_config_missing_or_broken(tmp_path):
    assert read_model_config("Qwen/Qwen2.5-0.5B-Instruct") is None  # hub ids are never fetched
    assert read_model_config(str(tmp_path)) is None
    (tmp_path / "config.json").write_text("{not json")
    assert read_model_config(str(tmp_path)) is None


def test_read_model_config_bundled_only_when_conversion_completed(tmp_path):
    folder = bundled_folder("tiny", tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_05B))
    assert read_model_config("bundled:tiny", home=tmp_path) is None  # half-written conversions are ignored
    (folder / COMPLETE_MARKER).write_text("")
    assert read_model_config("bundled:tiny", home=tmp_path) == QWEN25_05B
