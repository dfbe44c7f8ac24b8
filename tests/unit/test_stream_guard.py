"""Streams end properly: an exception or the deadline becomes one last error item, and the upstream is closed
however the stream ends (the model call behind it is cancelled when a client goes away)."""

import asyncio

from deployments.router.stream_guard import guarded, with_heartbeat


def failure(code, message):
    return {"error": {"code": code, "message": message}}


class Upstream:
    """An async generator's stand-in that records whether it was closed."""

    def __init__(self, items, then=None, delay_s=0.0):
        self.items, self.then, self.delay_s, self.closed = list(items), then, delay_s, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(self.delay_s)
        if self.items:
            return self.items.pop(0)
        if self.then is not None:
            raise self.then
        raise StopAsyncIteration

    async def aclose(self):
        self.closed = True


async def drain(stream):
    return [item async for item in stream]


def test_a_stream_that_ends_normally_passes_through_and_is_closed():
    upstream = Upstream(["a", "b"])
    assert asyncio.run(drain(guarded(upstream, 5, failure))) == ["a", "b"]
    assert upstream.closed


def test_an_exception_mid_stream_becomes_an_error_item_without_internal_detail(caplog):
    upstream = Upstream(["a"], then=RuntimeError("secret path /srv/x"))
    items = asyncio.run(drain(guarded(upstream, 5, failure)))
    assert items[0] == "a" and items[1]["error"]["code"] == "internal"
    assert "secret" not in items[1]["error"]["message"]
    assert "secret path" in caplog.text  # logged for the operator instead
    assert upstream.closed


def test_a_stream_past_its_deadline_ends_with_a_timeout_error():
    # 10 s of items against a 1 s deadline: items before the error even on a busy machine, and never all of them
    upstream = Upstream(["a"] * 1000, delay_s=0.01)
    items = asyncio.run(drain(guarded(upstream, 1.0, failure)))
    assert 2 <= len(items) < 1000
    assert items[-1]["error"]["code"] == "timeout" and "1 s deadline" in items[-1]["error"]["message"]


def test_a_client_that_goes_away_closes_the_upstream():
    upstream = Upstream(["a"] * 100, delay_s=0.05)

    async def consume_then_cancel():
        task = asyncio.create_task(drain(guarded(upstream, 30, failure)))
        await asyncio.sleep(0.2)
        task.cancel()  # what Starlette does when the client disconnects
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(consume_then_cancel())
    assert upstream.closed


def test_a_silent_stream_sends_heartbeats_and_loses_no_item():
    upstream = Upstream(["a", "b"], delay_s=0.25)  # each item a quarter second apart
    out = asyncio.run(drain(with_heartbeat(upstream, 0.1, "beat")))
    assert [item for item in out if item != "beat"] == ["a", "b"]  # every item, in order, none cancelled by a beat
    assert out.index("a") >= 2 and out.count("beat") >= 4, out  # beats while each item was awaited
    assert upstream.closed


def test_a_busy_stream_sends_no_heartbeat():
    assert asyncio.run(drain(with_heartbeat(Upstream(["a", "b", "c"]), 5, "beat"))) == ["a", "b", "c"]


def test_a_client_gone_mid_silence_cancels_the_pending_item_and_closes_the_upstream():
    upstream = Upstream(["never"], delay_s=30)

    async def leave_after_a_beat():
        stream = with_heartbeat(upstream, 0.05, "beat")
        assert await anext(stream) == "beat"
        await stream.aclose()  # what Starlette does when the client disconnects

    asyncio.run(asyncio.wait_for(leave_after_a_beat(), 5))
    assert upstream.closed and upstream.items == ["never"]
