"""Proof that a registered adapter is applied: it must move the base model's log-probabilities.

A LoRA whose B matrices are zero (peft's default initialisation), saved from the wrong module names, or silently
dropped by the engine changes nothing, and greedy text alone cannot tell (a good narrow adapter may answer a probe
exactly as the base does). So registration asks for the next-token distribution (top-k log-probabilities) after
fixed prefixes of the probe texts, with and without the adapter, one prefill each and no generation beyond one
token, and compares them; below the model's ``lora.probe_min_divergence`` the adapter is refused.

Why next-token log-probabilities rather than the log-probabilities of the prompt's own tokens: vLLM 0.32's CPU LoRA
path crashes the engine core when prompt log-probabilities are computed for a request batched with others (an einsum
over the batch's sampler indices against the prompt's tokens; measured on the e2e fleet). Sampled-token
log-probabilities go through the ordinary batched sampler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Extract the order id from this message: my order A1002 arrived broken.",
    '{"name": "Alice", "city": "Paris", "age": 31}',
    "Classify the intent of: I want my money back for the shoes I returned.",
)


PROBE_TOP_K = 20  # log-probabilities per position: the base's and the adapter's likeliest next tokens
DISJOINT_DIVERGENCE = 10.0  # a position where the two top-k sets share no token: as far apart as it gets (nats)
PROBE_CUTS = 3  # each probe text is cut at a third, two thirds and its end


def probe_prefixes(token_ids: Sequence[int]) -> list[list[int]]:
    """The prefixes of one tokenized probe text whose next token is compared."""
    count = len(token_ids)
    cuts = sorted({max(1, count * k // PROBE_CUTS) for k in range(1, PROBE_CUTS + 1)})
    return [list(token_ids[:cut]) for cut in cuts]


def position_divergence(base: Mapping[int, float], tuned: Mapping[int, float]) -> float:
    """Mean absolute log-probability difference over the next tokens both top-k lists hold."""
    shared = base.keys() & tuned.keys()
    if not shared:
        return DISJOINT_DIVERGENCE
    return sum(abs(base[t] - tuned[t]) for t in shared) / len(shared)


def mean_divergence(base: Sequence[Mapping[int, float]], tuned: Sequence[Mapping[int, float]]) -> float:
    """Mean over probe positions of :func:`position_divergence` (nats)."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"probe lengths differ or are empty ({len(base)} vs {len(tuned)} positions)")
    return sum(position_divergence(b, t) for b, t in zip(base, tuned, strict=True)) / len(base)


def probe_refusal(divergence: float, threshold: float) -> str | None:
    """Why the adapter is refused, or None when it moved the model enough."""
    if divergence >= threshold:
        return None
    return (
        f"the adapter does not change the model's output: mean log-probability change {divergence:.6f} on the probe "
        f"texts, below the model's lora.probe_min_divergence {threshold}; an adapter saved before training with "
        "peft's default init (B = 0) or with target modules the model lacks does this"
    )
