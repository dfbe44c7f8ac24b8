"""Places in the engine's batch, and how long requests wait for one: the queue wait the autoscaler scales on.

vLLM decodes at most ``max_num_seqs`` (the spec's ``concurrent_seqs``) sequences at once and queues the rest inside
its scheduler, where nobody can see how long they wait. A replica admits at most that many requests into its
engine through :class:`BatchSlots`, so the rest wait here, in the open: the engine never holds more than it can
decode, so nothing is lost, and the wait for a slot is measured. :meth:`BatchSlots.wait_p90_s` is that wait
(finished waits of the last ``window_s`` seconds, and the oldest request still waiting, whichever says more: a
queue that stopped moving shows at once). Pure asyncio with an injectable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

WAIT_WINDOW_S = 30.0
"""Finished waits older than this are forgotten: the autoscaler looks at recent pressure, not history."""


class BatchSlots:
    """``async with slots.slot():`` holds one of ``size`` places in the engine's batch."""

    def __init__(self, size: int, window_s: float = WAIT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        """``size`` is the engine's ``max_num_seqs``; more would only queue inside vLLM, out of sight."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self._free = asyncio.Semaphore(size)
        self._window_s = window_s
        self._clock = clock
        self._waits: deque[tuple[float, float]] = deque()  # (when the wait ended, how long it was)
        self._waiting_since: dict[int, float] = {}
        self._waiting_work: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def slot(self, work: float = 0.0) -> AsyncIterator[float]:
        """Wait for a place, yield how long that took, give the place back on exit (also on cancel or error).

        ``work`` is what the request will cost once in (its expected tokens): :attr:`waiting_work` sums it over
        the requests still waiting, the queue a newcomer would stand behind.
        """
        ticket, start = object(), self._clock()
        self._waiting_since[id(ticket)] = start
        self._waiting_work[id(ticket)] = work
        try:
            await self._free.acquire()
        finally:
            del self._waiting_since[id(ticket)]
            del self._waiting_work[id(ticket)]
        now = self._clock()
        waited = now - start
        self._waits.append((now, waited))
        try:
            yield waited
        finally:
            self._free.release()

    @property
    def waiting(self) -> int:
        """Requests waiting for a place right now."""
        return len(self._waiting_since)

    @property
    def waiting_work(self) -> float:
        """The ``work`` of every request waiting for a place right now."""
        return sum(self._waiting_work.values())

    def wait_p90_s(self) -> float:
        """The 90th percentile of recent waits, or the oldest current wait if longer; 0.0 when nothing waited."""
        now = self._clock()
        while self._waits and now - self._waits[0][0] > self._window_s:
            self._waits.popleft()
        oldest = max((now - since for since in self._waiting_since.values()), default=0.0)
        return max(_p90([waited for _, waited in self._waits]), oldest)


def _p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
