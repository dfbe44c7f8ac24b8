"""Every stream the router sends ends properly: within its deadline, with an error event when it fails, and with
its upstream closed however it ends.

Once a streamed answer's headers are out, its status can no longer say what went wrong, so the stream itself must:
an exception or the overall deadline becomes one last error item (OpenAI's error shape, no internal detail: that
is logged), never a silent end. When the client goes away, Starlette cancels the stream; closing the upstream
then cancels the model call behind it (``ServeBackend`` cancels its handle call, and vLLM aborts the request), so
the engine stops decoding for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

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
