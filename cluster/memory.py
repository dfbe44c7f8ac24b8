"""Engine memory estimate: how many GiB one vLLM engine of a model reserves on its accelerator.

vLLM reserves its KV cache statically at start-up, so an engine's footprint is known before it serves a request:
weights + KV cache for ``concurrent_seqs`` sequences of ``max_model_len`` tokens + runtime overhead. The planner
turns this number into a GPU share; docs/placement.md shows the formula with worked numbers.

Pure arithmetic and one JSON file read: nothing here imports torch, transformers or vllm.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.model_store import bundled_folder, is_complete, slmfleet_home
from cluster.spec import ModelSpec

GIB = 1024**3
BYTES_PER_DTYPE = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
# Runtime overhead: CUDA context, NCCL/cuBLAS workspaces and small CUDA graphs (constant), plus the activation
# peak vLLM measures while profiling and allocator fragmentation (a fraction of weights + KV cache).
RUNTIME_OVERHEAD_GIB = 1.0
RUNTIME_OVERHEAD_FRACTION = 0.10
# Without a config.json, KV values per token (K and V, all layers) are guessed from the parameter count as
# 36864 x params_b ** 0.4, at or above every grouped-query model we checked: Qwen2.5-0.5B 12k (guess 28k),
# Llama-3.2-1B 32k (40k), Qwen2.5-3B 18k (58k), Llama-3.2-3B 56k (59k), Qwen2.5-7B 28k (83k), Llama-3.1-8B 64k (85k),
# Qwen2.5-32B 128k (149k), Llama-3.1-70B 160k (202k). Models without GQA (Phi-3.5-mini 192k, SmolLM2-1.7B 96k)
# exceed it: give those memory_gib or a config.json.
# LoRA slots without a config.json: values per slot per unit of rank as a fraction of the parameter count. Counted
# from config.json shapes: SmolLM2-135M 2.3e-3, Llama-2-7B 3.7e-4, Llama-3.1-8B 3.3e-4; the guess keeps the high end.
LORA_GUESS_VALUES_PER_PARAM_PER_RANK = 2.5e-3
KV_GUESS_SCALE = 36_864
KV_GUESS_EXPONENT = 0.4


class UnknownModelSizeError(ValueError):
    """A model whose size cannot be estimated: no memory_gib, no params_b and no config.json."""


@dataclass(frozen=True)
class MemoryEstimate:
    """One engine's memory, in GiB, split into the parts the plan reports."""

    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    source: str  # "declared" (memory_gib), "config.json" or "params_b"
    params_b: float | None = None
    lora_gib: float = 0.0  # the LoRA slots (max_loras adapters at max_lora_rank), reserved at start

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.lora_gib + self.overhead_gib

    def per_gpu_gib(self, tensor_parallel: int) -> float:
        """Memory on each GPU when weights and KV cache are split ``tensor_parallel`` ways.

        The constant overhead is paid on every GPU; the proportional overhead splits with what it is a fraction of.
        """
        if tensor_parallel == 1 or self.source == "declared":
            return self.total_gib / tensor_parallel
        reserved = self.weights_gib + self.kv_cache_gib + self.lora_gib
        split = reserved * (1 + RUNTIME_OVERHEAD_FRACTION) / tensor_parallel
        return split + RUNTIME_OVERHEAD_GIB

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_gib": round(self.weights_gib, 3),
            "kv_cache_gib": round(self.kv_cache_gib, 3),
            "lora_gib": round(self.lora_gib, 3),
            "overhead_gib": round(self.overhead_gib, 3),
            "total_gib": round(self.total_gib, 3),
            "source": self.source,
            "params_b": None if self.params_b is None else round(self.params_b, 3),
        }


def estimate_engine_memory(name: str, model: ModelSpec, config: dict[str, Any] | None = None) -> MemoryEstimate:
    """Estimate one engine of ``model``; ``config`` is its HF config.json when the store has it.

    Precedence: declared ``memory_gib`` > parameters counted from ``config`` > declared ``params_b``.
    """
    if model.memory_gib is not None:
        return MemoryEstimate(model.memory_gib, 0.0, 0.0, "declared", model.params_b)
    dtype_bytes = BYTES_PER_DTYPE[model.dtype]
    tokens = model.max_model_len * model.concurrent_seqs
    if config:
        params = count_params(config)
        kv_values = kv_values_per_token(config)
        source = "config.json"
    elif model.params_b is not None:
        params = model.params_b * 1e9
        kv_values = heuristic_kv_values_per_token(model.params_b)
        source = "params_b"
    else:
        raise UnknownModelSizeError(
            f"model '{name}': cannot estimate its memory; declare params_b or memory_gib "
            "(or make its config.json available)"
        )
    weights = params * dtype_bytes / GIB
    kv_cache = kv_values * dtype_bytes * tokens / GIB
    lora = lora_values_per_rank(config, params) * _lora_ranks(model) * dtype_bytes / GIB
    overhead = RUNTIME_OVERHEAD_GIB + RUNTIME_OVERHEAD_FRACTION * (weights + kv_cache + lora)
    return MemoryEstimate(weights, kv_cache, overhead, source, params / 1e9, lora)


def _lora_ranks(model: ModelSpec) -> int:
    """Slots x rank: how many rank-1 LoRA layers the engine reserves (0 without LoRA)."""
    return model.lora.max_loras * model.lora.max_lora_rank if model.lora else 0


def lora_values_per_rank(config: dict[str, Any] | None, params: float) -> float:
    """Values one LoRA slot holds per unit of rank: A (r x in) and B (out x r) for every linear layer of every
    decoder layer, since vLLM reserves every module a LoRA may target; without a config, a share of ``params``."""
    if not config:
        return LORA_GUESS_VALUES_PER_PARAM_PER_RANK * params
    layers = int(text_config(config)["num_hidden_layers"])
    return float(layers * sum(i + o for i, o in module_dims(config).values()))


def module_dims(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer a LoRA may target, for a Llama/Qwen/Mistral-shaped config."""
    cfg = text_config(config)
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = _head_dim(cfg)
    intermediate = int(cfg.get("intermediate_size") or 4 * hidden)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, intermediate),
        "up_proj": (hidden, intermediate),
        "down_proj": (intermediate, hidden),
    }


def heuristic_kv_values_per_token(params_b: float) -> int:
    """KV values (K and V, all layers) per token guessed from the parameter count; see the module constants."""
    return math.ceil(KV_GUESS_SCALE * params_b**KV_GUESS_EXPONENT)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model under ``text_config``."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def _head_dim(config: dict[str, Any]) -> int:
    head_dim = config.get("head_dim")
    if head_dim:
        return int(head_dim)
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def kv_values_per_token(config: dict[str, Any]) -> int:
    """2 (K and V) x layers x KV heads x head size, from an HF config.json."""
    cfg = text_config(config)
    kv_heads = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    return 2 * int(cfg["num_hidden_layers"]) * kv_heads * _head_dim(cfg)


def count_params(config: dict[str, Any]) -> float:
    """Parameters of a decoder-only transformer (Llama/Qwen/Mistral/Phi/Gemma shape) from its config.json.

    Embeddings (+ an untied LM head), per layer attention (q, k, v, o) and a gated MLP (3 matrices, times the
    expert count for mixture-of-experts), norms ignored (< 0.1%). A ``num_parameters`` key wins when present.
    """
    cfg = text_config(config)
    if cfg.get("num_parameters"):
        return float(cfg["num_parameters"])
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = _head_dim(cfg)
    intermediate = int(cfg.get("intermediate_size") or 4 * hidden)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate * experts
    embeddings = int(cfg["vocab_size"]) * hidden
    lm_head = 0 if cfg.get("tie_word_embeddings", False) else embeddings
    return float(embeddings + lm_head + int(cfg["num_hidden_layers"]) * (attention + mlp))


def read_model_config(source: str, home: Path | None = None) -> dict[str, Any] | None:
    """The config.json of a model source when it is on this machine, else None (hub ids are not fetched).

    ``bundled:<name>`` looks in the model store's converted folder; a path looks in that folder.
    """
    if source.startswith("bundled:"):
        folder = bundled_folder(source.removeprefix("bundled:"), home or slmfleet_home())
        if not is_complete(folder):
            return None
    else:
        folder = Path(source).expanduser()
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
