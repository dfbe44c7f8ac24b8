"""A read of shared state done at most once a period, on the request path, that holds a request only briefly.

Router replicas re-read the adapter registry and the promotions on the next request once their copy is a period
old, and that request waits for the read, so a registration made through another replica is served here within a
period (reads take milliseconds). Requests that arrive while a read is under way wait for it too rather than being
served from the copy it is replacing: a replica that has just started (its copy still empty) would otherwise answer
404 for every registered adapter, as a second router replica did in CI. The first read is waited for in full;
after it, no request waits longer than ``patience_s`` for a slow or hung store: it is served from the current copy
while the read goes on. A forced read (after a write of this replica's own) is awaited in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

PATIENCE_S = 0.5


class PeriodicRead:
    """``await refresh()`` before serving; ``await refresh(force=True)`` after a write of one's own. ``read`` must
    not raise (an unreachable store keeps the current copy)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[None]],
        period_s: float,
        clock: Callable[[], float] = time.monotonic,
        patience_s: float = PATIENCE_S,
    ) -> None:
        self.read, self.period_s, self.clock, self.patience_s = read, period_s, clock, patience_s
        self.read_at = float("-inf")
        self.loaded = False  # a read has finished: there is a copy to serve from
        self._reading: asyncio.Future[None] | None = None

    async def __call__(self, force: bool = False) -> None:
        if self._reading is not None:  # a read is under way: wait for what it brings
            await self._wait(self._reading, whole=force)
            if not force:
                return
        now = self.clock()
        if not force and now - self.read_at < self.period_s:
            return
        self.read_at = now
        reading = self._reading = asyncio.ensure_future(self._read())
        reading.add_done_callback(self._finished)  # not a `finally`: a cancelled caller leaves the read running
        await self._wait(reading, whole=force)

    async def _wait(self, reading: asyncio.Future[None], whole: bool) -> None:
        if whole or not self.loaded:
            await asyncio.shield(reading)
            return
        with contextlib.suppress(TimeoutError):  # the store is slow: serve from the current copy meanwhile
            await asyncio.wait_for(asyncio.shield(reading), self.patience_s)

    async def _read(self) -> None:
        await self.read()
        self.loaded = True

    def _finished(self, reading: asyncio.Future[None]) -> None:
        if self._reading is reading:
            self._reading = None
