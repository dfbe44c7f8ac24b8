"""How fast a replica's queue drains and how long its answers run: the measurements admission by deadline uses.

Each finished request reports its completion tokens and how long it held its batch slot. The per-sequence rate
(tokens over slot-seconds, summed over recent requests) times the batch size is the rate the queue drains at when
the batch is full, which is when anything queues. Pure; the model server feeds it.
"""

from __future__ import annotations

from collections import deque

DEFAULT_EXPECTED_TOKENS = 256
"""Tokens assumed for a request without ``max_tokens`` before the model's answers have been measured."""
RATE_SAMPLES = 64
"""Finished requests the rate and the answer lengths are measured over (recent load, not history)."""
MIN_SAMPLES = 4
"""Below this many finished requests nothing is measured yet (admission then applies only its count bound)."""


class DecodeRate:
    """Recent finished requests: ``(completion tokens, seconds in a batch slot)``."""

    def __init__(self, batch_size: int, samples: int = RATE_SAMPLES) -> None:
        self._batch_size = batch_size
        self._recent: deque[tuple[int, float]] = deque(maxlen=samples)

    def finished(self, completion_tokens: int, slot_s: float) -> None:
        if slot_s > 0:
            self._recent.append((completion_tokens, slot_s))

    def tokens_per_s(self) -> float | None:
        """Decode rate of a full batch, or None before :data:`MIN_SAMPLES` requests finished."""
        if len(self._recent) < MIN_SAMPLES:
            return None
        tokens = sum(t for t, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return tokens / seconds * self._batch_size if tokens > 0 else None

    def expected_tokens(self, max_tokens: int | None) -> int:
        """What a request may decode: its ``max_tokens``, capped by the longest recent answer of this model (a
        limit of 512 on a model whose answers run to 20 tokens would overstate the queue 25 times)."""
        longest = max((t for t, _ in self._recent), default=0) if len(self._recent) >= MIN_SAMPLES else 0
        cap = longest or DEFAULT_EXPECTED_TOKENS
        return max(1, min(max_tokens, cap) if max_tokens else cap)
