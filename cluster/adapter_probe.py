"""Proof that a registered adapter is applied: it must move the base model's log-probabilities.

A LoRA whose B matrices are zero (peft's default initialisation), saved from the wrong module names, or silently
dropped by the engine changes nothing, and greedy text alone cannot tell (a good narrow adapter may answer a probe
exactly as the base does). So registration runs one prefill per probe text with and without the adapter and
compares the per-token log-probabilities; below the model's ``lora.probe_min_divergence`` it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Extract the order id from this message: my order A1002 arrived broken.",
    '{"name": "Alice", "city": "Paris", "age": 31}',
    "Classify the intent of: I want my money back for the shoes I returned.",
)


def mean_divergence(base: Sequence[float], tuned: Sequence[float]) -> float:
    """Mean absolute difference of two per-token log-probability lists of the same text (nats)."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"probe lengths differ or are empty ({len(base)} vs {len(tuned)} tokens)")
    return sum(abs(a - b) for a, b in zip(base, tuned, strict=True)) / len(base)


def probe_refusal(divergence: float, threshold: float) -> str | None:
    """Why the adapter is refused, or None when it moved the model enough."""
    if divergence >= threshold:
        return None
    return (
        f"the adapter does not change the model's output: mean log-probability change {divergence:.6f} on the probe "
        f"texts, below the model's lora.probe_min_divergence {threshold}; an adapter saved before training with "
        "peft's default init (B = 0) or with target modules the model lacks does this"
    )
