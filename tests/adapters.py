"""LoRA adapters made in the test setup with peft (nothing binary is committed).

``init_lora_weights=False`` gives random A and B, so an adapter visibly changes the model without training (peft's
default sets B = 0, an adapter that changes nothing: the probe's refusal case). Each takes about a second.
"""

from __future__ import annotations

from pathlib import Path

from cluster.model_store import ensure_bundled, slmfleet_home

BUNDLED_NAME = "smollm2-135m-instruct"


def bundled_base() -> Path:
    """The bundled SmolLM2 as an HF folder (converted once, shared with the fleet's engines)."""
    return ensure_bundled(BUNDLED_NAME, slmfleet_home())


def make_adapter(out: Path, *, seed: int, rank: int = 8, trained_init: bool = False, base: Path | None = None) -> Path:
    """A peft LoRA on q/v of the bundled model (or ``base``): random weights, or peft's do-nothing init when
    ``trained_init`` is True."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base or bundled_base(), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=trained_init,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_foreign_adapter(out: Path, *, seed: int = 0) -> Path:
    """A LoRA for another base model: a tiny Llama with a hidden size of 64 (random weights, made in memory)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tiny = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
    )
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(tiny, config).save_pretrained(out)
    return out
