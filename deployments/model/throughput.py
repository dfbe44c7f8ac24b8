"""A replica's measured throughput: tokens per hour of busy time, the figure derived prices are made of.

Busy time is wall time with at least one request in flight, so idle minutes do not dilute the rate, while
concurrent requests share the time they overlap (eight requests decoding together in one second count one busy
second): the rate is what the replica delivers at the load it sees. Pure, with an injectable clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SECONDS_PER_HOUR = 3600.0


class ThroughputMeter:
    """Counts tokens and busy seconds; :meth:`tokens_per_hour` is None until something was served."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = 0
        self._busy_s = 0.0
        self._in_flight = 0
        self._busy_since = 0.0

    def started(self) -> None:
        if self._in_flight == 0:
            self._busy_since = self._clock()
        self._in_flight += 1

    def finished(self, tokens: int) -> None:
        self._tokens += tokens
        self._in_flight -= 1
        if self._in_flight == 0:
            self._busy_s += self._clock() - self._busy_since

    def tokens_per_hour(self) -> float | None:
        busy = self._busy_s + (self._clock() - self._busy_since if self._in_flight else 0.0)
        if busy <= 0 or self._tokens <= 0:
            return None
        return self._tokens / busy * SECONDS_PER_HOUR
