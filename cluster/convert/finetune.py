"""S5, fine-tune: a LoRA adapter (peft) trained on the LLM's curated answers for one task, on the prompts exactly as
the model replicas will build them (``cluster.chat_messages``, the model's own chat template), with the loss on
the answer tokens only. Fixed seeds; a model card with the data counts, the settings and the loss.

``TrainSettings.for_device`` gives the defaults: on a CPU, small and short enough for the bundled 135M model
(measured: about 1.5 s a step at batch 4 on these 2 cores); on a GPU, more steps at a larger batch in bf16. On a
Ray cluster the same function runs as a task with a GPU (``train_on_ray``), and the adapter's files come back to
the caller as bytes, so no storage is shared between the loop and the cluster.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cluster.chat_messages import with_instructions

CARD_FILE = "README.md"
METRICS_FILE = "training.json"


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 40
    batch_size: int = 4
    learning_rate: float = 2e-3
    max_length: int = 384
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False

    @classmethod
    def for_device(cls, device: str) -> TrainSettings:
        if device.startswith("cuda"):
            return cls(steps=200, batch_size=16, learning_rate=5e-4, device=device, bf16=True, rank=16, alpha=32)
        return cls(device=device)


def prompt_and_answer(example: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The messages as the replica sends them to the engine, and the LLM's answer the adapter learns to give."""
    return with_instructions(example["messages"], example.get("instructions") or ""), example["answer"]


def _encode(tokenizer: Any, example: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt's labels are -100, so only the answer (and its end) is learned."""
    messages, answer = prompt_and_answer(example)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[-max_length:]
    labels = ([-100] * len(prompt_ids) + answer_ids)[-max_length:]
    return ids, labels


def _batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = [ids + [pad_id] * (width - len(ids)) for ids, _ in encoded]
    labels = [labels + [-100] * (width - len(labels)) for _, labels in encoded]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def train_adapter(base: Path, examples: list[dict[str, Any]], out: Path, settings: TrainSettings) -> dict[str, Any]:
    """Train, save the adapter into ``out`` with its model card, and return the training metrics."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not examples:
        raise ValueError("no training examples")
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(settings.device)
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    encoded = [_encode(tokenizer, e, settings.max_length) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = random.Random(settings.seed)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for _ in range(settings.steps):
        batch = _batch(order.sample(encoded, min(settings.batch_size, len(encoded))), pad_id)
        loss = model(**{k: v.to(settings.device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
    metrics = {
        "examples": len(examples),
        "steps": settings.steps,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_first": losses[0],
        "loss_last": sum(losses[-5:]) / len(losses[-5:]),
        "settings": asdict(settings),
    }
    model.save_pretrained(out)
    return metrics


def write_model_card(out: Path, task: dict[str, Any], base: str, metrics: dict[str, Any]) -> None:
    """What the adapter is, what it learned from and how training went (no example text: counts only)."""
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    settings = metrics["settings"]
    lines = [
        f"# {task['name']}: a LoRA specialist grown by slm-fleet's conversion loop",
        "",
        f"- base model: {base}",
        f"- task: cluster {task['id']} of the logged LLM-tier calls ({task['size']} examples after curation)",
        f"- trained on {metrics['examples']} examples (held-out examples are never trained on)",
        f"- LoRA rank {settings['rank']}, alpha {settings['alpha']}, modules {', '.join(settings['target_modules'])}",
        f"- {metrics['steps']} steps at batch {settings['batch_size']}, learning rate {settings['learning_rate']}, "
        f"seed {settings['seed']}, on {settings['device']} in {metrics['seconds']} s",
        f"- training loss {metrics['loss_first']} -> {metrics['loss_last']:.4f}",
    ]
    if "evaluation" in metrics:
        lines.append(f"- held-out evaluation: {json.dumps(metrics['evaluation'])}")
    (out / CARD_FILE).write_text("\n".join(lines) + "\n")


def _train_to_files(base_source: str, examples: list[dict[str, Any]], settings: TrainSettings) -> dict[str, Any]:
    """Train where this runs (a Ray worker) and return the adapter's files as bytes with the metrics."""
    import tempfile

    from cluster.model_store import resolve_source

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "adapter"
        metrics = train_adapter(Path(resolve_source(base_source)), examples, out, settings)
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    return {"metrics": metrics, "files": files}


def train_on_ray(
    address: str, base_source: str, examples: list[dict[str, Any]], out: Path, *, gpus: float, settings: TrainSettings
) -> dict[str, Any]:
    """:func:`train_adapter` as a Ray task on the cluster at ``address`` (one GPU when ``gpus``), its adapter
    written into ``out`` here."""
    import ray

    ray.init(address=address, ignore_reinit_error=True)
    if gpus:
        settings = replace(settings, device="cuda")
    task = ray.remote(num_gpus=gpus)(_train_to_files)
    result = ray.get(task.remote(base_source, examples, settings))
    out.mkdir(parents=True, exist_ok=True)
    for name, data in result["files"].items():
        (out / name).write_bytes(data)
    return result["metrics"]
