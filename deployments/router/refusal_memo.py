"""A router replica remembers, for a moment, that a model refused for overload, and refuses alike without a call.

Under a burst, every request the model will refuse still costs a trip through Serve's request router to a replica
and back; on a busy machine that trip, not the replica's sub-millisecond decision, is what makes a refusal slow.
So when a replica refuses, the router keeps what it foresaw (the expected wait; unknown for a full count bound)
for at most :data:`HOLD_S`, and a request whose own queue-wait budget is smaller than that wait is refused at once,
with the same error and ``Retry-After``. A request with a larger budget (higher priority) still goes to the model,
and after the hold every request does again, so the memo is never more than a second out of date. Pure; an
injectable clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from deployments.protocol import GenerationResult, failure

HOLD_S = 1.0


@dataclass(frozen=True)
class _Refusal:
    at: float
    foreseen_wait_s: float  # inf: refused by the count bound, no estimate
    retry_after_s: int


class RefusalMemo:
    """Per model, the last overload refusal seen by this router replica, for :data:`HOLD_S`."""

    def __init__(self, hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_s, self._clock = hold_s, clock
        self._last: dict[str, _Refusal] = {}

    def observe(self, model: str, result: GenerationResult) -> None:
        """Remember a replica's overload refusal (other results change nothing)."""
        error = result.error
        if error is None or error.kind != "overloaded" or error.retry_after_s is None:
            return
        foreseen = error.expected_wait_s if error.expected_wait_s is not None else math.inf
        self._last[model] = _Refusal(self._clock(), foreseen, error.retry_after_s)

    def check(self, model: str, budget_s: float) -> GenerationResult | None:
        """A refusal for a request that may wait ``budget_s``, when the model refused one that could not wait as
        long as it foresaw within the hold; else None (the request goes to the model)."""
        last = self._last.get(model)
        if last is None or self._clock() - last.at > self._hold_s or budget_s >= last.foreseen_wait_s:
            return None
        wait = (
            "its queue is full" if math.isinf(last.foreseen_wait_s) else f"expected wait {last.foreseen_wait_s:.1f} s"
        )
        message = f"model '{model}' is at capacity: {wait}, over this request's {budget_s:g} s budget"
        return failure(model, "overloaded", message, last.retry_after_s)
