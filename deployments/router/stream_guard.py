"""Every stream the router sends ends properly: within its deadline, with an error event when it fails, and with
its upstream closed however it ends.

Once a streamed answer's headers are out, its status can no longer say what went wrong, so the stream itself must:
an exception or the overall deadline becomes one last error item (OpenAI's error shape, no internal detail: that
is logged), never a silent end. When the client goes away, Starlette cancels the stream; closing the upstream
then cancels the model call behind it (``ServeBackend`` cancels its handle call, and vLLM aborts the request), so
the engine stops decoding for nobody. A stream that falls silent (a cut one waiting for the replica Serve starts in
its dead one's place, tens of seconds) sends a heartbeat meanwhile, so no proxy or client idle timeout cuts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_S = 10.0  # well under common proxy idle timeouts (nginx and AWS ALB: 60 s)
SSE_HEARTBEAT = ": keep-alive\n\n"  # an SSE comment line: clients skip it
Failure = Callable[[str, str], T]
"""Builds a stream's closing error item from an error code and a message."""


async def guarded(items: AsyncIterator[T], deadline_s: float, failure: Failure[T]) -> AsyncIterator[T]:
    """``items`` until they end, the deadline passes (then ``failure("timeout", ...)``) or they raise (then
    ``failure("internal", ...)``); ``items`` is closed on every way out, client disconnect included."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + deadline_s
    try:
        while True:
            try:
                async with asyncio.timeout_at(ends_at):
                    item = await anext(items)
            except StopAsyncIteration:
                return
            yield item
    except TimeoutError:
        log.warning("a stream ran past its %s s deadline and was cut", deadline_s)
        yield failure("timeout", f"the stream ran past its {deadline_s:g} s deadline; the answer is incomplete")
    except Exception:
        log.exception("a stream failed after it started")
        yield failure("internal", "internal error while streaming; the answer is incomplete")
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def with_heartbeat(items: AsyncIterator[T], every_s: float, beat: T) -> AsyncIterator[T]:
    """``items``, with ``beat`` sent after every ``every_s`` seconds without an item. The pending item is awaited in
    a task of its own, never cancelled by a beat; on every way out it is cancelled and ``items`` closed."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield beat
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):  # its cancellation, or what it raised: the stream is over
                await pending
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
