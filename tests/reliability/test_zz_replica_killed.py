"""The small model's replica process killed under load, plain and streamed requests in flight: every request ends
in an answer or a refusal with Retry-After; a stream cut after text left is resumed on the replica Serve starts in
the dead one's place and ends like any other, so no stream carries an error event; none hangs, none gets a 500;
Serve replaces the replica and it serves again.

Runs last in the tier (it kills the fleet's only engine). The load is a closed loop of clients that honour
Retry-After, as OpenAI's client does: the point is what happens to work in flight, not throughput.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(420)]
CLIENTS_PER_KIND = 3
KILL_AFTER_S = 8.0  # at the earliest; then as soon as a stream is part-way through its answer
EARLY_TEXT_CHARS = 60  # "part-way": it has sent some text, and (at max_tokens 48) most is still to come
RECOVERY_WITHIN_S = 240.0
AFTER_RECOVERY_S = 8.0
CLIENT_TIMEOUT_S = 180.0  # above the router's own limits: a request still open at this point hung
BODY = {"model": "smol", "messages": [{"role": "user", "content": "List five colours."}], "max_tokens": 48}


@dataclass
class Ended:
    """One request as the client saw it."""

    kind: str  # "plain" or "stream"
    started: float
    ended: float
    status: int  # 0: no HTTP answer (timeout, connection error)
    retry_after: str | None = None
    text: str = ""
    done: bool = False  # a stream's final "data: [DONE]"
    error_events: list[dict] = field(default_factory=list)
    resumed_after: int | None = None  # a stream resumed after its replica died: the characters sent before
    text_at_kill: str | None = None  # a stream's text when the replica was killed

    def problem(self) -> str | None:
        """Why this ending breaks the promise, or None."""
        if self.status == 0:
            return "no answer (timeout or connection error)"
        if self.status in (429, 503):
            return None if (self.retry_after or "").isdigit() else "refused without Retry-After"
        if self.status != 200:
            return f"status {self.status}"
        if self.kind == "stream" and not self.done:
            return "stream ended without [DONE]"
        if self.error_events:
            return f"stream ended with an error event: {self.error_events}"
        return None if self.text else "200 without text"


async def plain(http: httpx.AsyncClient, url: str) -> Ended:
    started = time.monotonic()
    try:
        resp = await http.post(url, json=BODY)
    except httpx.HTTPError:
        return Ended("plain", started, time.monotonic(), 0)
    text = (resp.json()["choices"][0]["message"]["content"] or "") if resp.status_code == 200 else ""
    return Ended("plain", started, time.monotonic(), resp.status_code, resp.headers.get("Retry-After"), text)


async def streamed(http: httpx.AsyncClient, url: str, ended: Ended) -> Ended:
    try:
        async with http.stream("POST", url, json={**BODY, "stream": True}) as resp:
            ended.status, ended.retry_after = resp.status_code, resp.headers.get("Retry-After")
            async for line in resp.aiter_lines():
                read_event(ended, line)
    except httpx.HTTPError:  # before the headers: status stays 0; after them: no [DONE], a silent cut
        pass
    ended.ended = time.monotonic()
    return ended


def read_event(ended: Ended, line: str) -> None:
    if not line.startswith("data: "):
        return
    data = line.removeprefix("data: ")
    if data == "[DONE]":
        ended.done = True
        return
    event = json.loads(data)
    if "error" in event:
        ended.error_events.append(event["error"])
    if "resumed_after_chars" in event.get("slmfleet", {}):
        ended.resumed_after = event["slmfleet"]["resumed_after_chars"]
    for choice in event.get("choices", []):
        ended.text += choice.get("delta", {}).get("content") or ""


async def client(kind: str, url: str, until: asyncio.Event, ended: list[Ended], open_streams: list[Ended]) -> None:
    """Back-to-back requests of one kind until told to stop, waiting out each Retry-After; ``open_streams`` holds
    the streams under way (so the kill can note the text each had)."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
        while not until.is_set():
            if kind == "plain":
                outcome = await plain(http, url)
            else:
                outcome = Ended("stream", time.monotonic(), 0.0, 0)
                open_streams.append(outcome)
                await streamed(http, url, outcome)
                open_streams.remove(outcome)
            ended.append(outcome)
            if outcome.status in (429, 503):
                await asyncio.sleep(min(float(outcome.retry_after or 1), 5.0))


async def smol_state(http: httpx.AsyncClient, url: str) -> str | None:
    try:
        return (await http.get(f"{url}/healthz")).json()["models"]["smol"]["state"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None


async def part_way(open_streams: list[Ended], within_s: float) -> None:
    """Until a stream under way has sent early text: a kill then cuts it, so resumption is what the test sees."""
    deadline = time.monotonic() + within_s
    while not any(0 < len(s.text) < EARLY_TEXT_CHARS for s in open_streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def kill_under_load(fleet) -> tuple[list[Ended], float, float]:
    """(every request, when the kill happened, seconds from the kill until smol served again per /healthz)."""
    url, stop, ended, open_streams = f"{fleet.url}/v1/chat/completions", asyncio.Event(), [], []
    kinds = ("plain", "stream") * CLIENTS_PER_KIND
    clients = [asyncio.create_task(client(k, url, stop, ended, open_streams)) for k in kinds]
    await asyncio.sleep(KILL_AFTER_S)
    await part_way(open_streams, within_s=60)
    fleet.replica_process("model-smol").kill()
    killed, seen_down, recovered = time.monotonic(), False, None
    for stream in open_streams:
        stream.text_at_kill = stream.text
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() - killed < RECOVERY_WITHIN_S:
            state = await smol_state(http, fleet.url)
            seen_down = seen_down or state not in ("ready", None)
            if seen_down and state == "ready":
                recovered = time.monotonic() - killed
                break
            await asyncio.sleep(1)
    await asyncio.sleep(AFTER_RECOVERY_S)
    stop.set()
    await asyncio.gather(*clients)
    assert recovered is not None, f"smol was not serving again {RECOVERY_WITHIN_S} s after its replica was killed"
    return ended, killed, recovered


def test_killed_replica_loses_no_request_and_is_replaced(fleet):
    old_pid = fleet.replica_process("model-smol").pid
    ended, killed, recovered_s = asyncio.run(kill_under_load(fleet))

    problems = [(e.kind, e.status, e.problem()) for e in ended if e.problem()]
    assert not problems, problems
    in_flight = [e for e in ended if e.started < killed < e.ended]
    assert in_flight, "no request was in flight when the replica died: the test proved nothing"
    assert {e.kind for e in in_flight} == {"plain", "stream"}, [e.kind for e in in_flight]
    after = [e for e in ended if e.started > killed + recovered_s]
    assert after and all(e.status == 200 and e.text for e in after), [(e.kind, e.status) for e in after]
    assert fleet.replica_process("model-smol").pid != old_pid
    # every stream that had text when its replica died was resumed where it was cut, and is one whole answer (one
    # that ended within seconds of the kill had already been sent whole: a cut one waits for the new replica)
    cut = [e for e in in_flight if e.kind == "stream" and e.text_at_kill and e.ended > killed + 5]
    assert cut, "no stream had sent text when the replica died: resumption was not tested"
    for stream in cut:
        assert stream.resumed_after is not None, "a stream cut after text left was not resumed"
        # the text sent before the cut is all there; the resumed part may be empty when the kill fell after the
        # answer's last text and before its finish (continued text after a cut is asserted in test_stream_resume.py)
        assert stream.text.startswith(stream.text_at_kill) and len(stream.text) >= stream.resumed_after
    # a figure, not an assertion here: that a resumed greedy stream equals the uncut answer is asserted in
    # test_stream_resume.py, where the cut is placed exactly rather than wherever the kill lands
    uncut = next(e.text for e in after if e.kind == "stream")
    same = sum(e.text == uncut for e in cut)
    counts = {
        "answered": sum(e.status == 200 for e in ended),
        "refused": sum(e.status in (429, 503) for e in ended),
        "streams resumed": len(cut),
        "resumed equal to an uncut answer": same,
        "in flight at the kill": len(in_flight),
    }
    print(f"FIGURE: replica killed under load: {counts}; serving again {recovered_s:.1f} s after the kill")
