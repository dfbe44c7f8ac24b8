"""A read of shared state done at most once a period, on the request path, that no request overtakes.

Router replicas re-read the adapter registry and the promotions on the next request once their copy is a period
old. Requests that arrive while that read is under way wait for it rather than being served from the copy it is
replacing: otherwise a replica that has just started (its copy still empty) answers 404 for every registered
adapter until its first read returns, which a second router replica did in CI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class PeriodicRead:
    """``await refresh()`` before serving; ``await refresh(force=True)`` after a write of one's own."""

    def __init__(
        self, read: Callable[[], Awaitable[None]], period_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.read, self.period_s, self.clock = read, period_s, clock
        self.read_at = float("-inf")
        self._reading: asyncio.Future[None] | None = None

    async def __call__(self, force: bool = False) -> None:
        if self._reading is not None:  # a read is under way: no request is served from the copy it replaces
            await asyncio.shield(self._reading)
            if not force:
                return
        now = self.clock()
        if not force and now - self.read_at < self.period_s:
            return
        self.read_at = now
        reading = self._reading = asyncio.ensure_future(self.read())
        try:
            await asyncio.shield(reading)
        finally:
            if self._reading is reading:
                self._reading = None
