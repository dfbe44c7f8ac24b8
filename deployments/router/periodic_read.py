"""A read of shared state done at most once a period, on the request path, that never holds a request for long.

Router replicas re-read the adapter registry and the promotions on the next request once their copy is a period
old. Until the first read has finished, requests wait for it: a replica that has just started has an empty copy,
and served from it would answer 404 for every registered adapter (a second router replica did in CI). After that,
a due read runs in the background and requests are served from the current copy, so a slow or hung store delays
no request. A forced read (after a write of this replica's own) is awaited, so the writer's next request sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class PeriodicRead:
    """``await refresh()`` before serving; ``await refresh(force=True)`` after a write of one's own. ``read`` must
    not raise (an unreachable store keeps the current copy)."""

    def __init__(
        self, read: Callable[[], Awaitable[None]], period_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.read, self.period_s, self.clock = read, period_s, clock
        self.read_at = float("-inf")
        self.loaded = False  # a read has finished: there is a copy to serve from
        self._reading: asyncio.Future[None] | None = None

    async def __call__(self, force: bool = False) -> None:
        if self._reading is not None:
            if self.loaded and not force:
                return  # served from the current copy while the read runs
            await asyncio.shield(self._reading)  # the first read, or one that may predate this replica's write
            if not force:
                return
        now = self.clock()
        if not force and now - self.read_at < self.period_s:
            return
        self.read_at = now
        reading = self._reading = asyncio.ensure_future(self._read())
        reading.add_done_callback(self._finished)  # not a `finally`: a cancelled caller leaves the read running
        if force or not self.loaded:
            await asyncio.shield(reading)

    async def _read(self) -> None:
        await self.read()
        self.loaded = True

    def _finished(self, reading: asyncio.Future[None]) -> None:
        if self._reading is reading:
            self._reading = None
