"""Load as users make it: open-loop arrivals at absolute times, and a closed loop to find saturation.

An open loop sends each request at its scheduled time whether or not earlier ones came back, so a slow server
cannot lower the offered rate (a closed loop would quietly back off and hide the queue). Arrivals are Poisson,
drawn from a seeded generator and scheduled against the start time, so a client that lags catches up instead of
shifting every later request. Shared by ``benchmarks/overload.py`` and the reliability tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVER_ERROR = 500


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due and sent, how it ended (``status`` 0 for a client-side timeout or error)."""

    due_s: float
    sent_late_s: float
    latency_s: float
    status: int
    retry_after: str | None = None
    code: str | None = None
    request_id: str | None = None  # Serve's x-request-id: finds the request in the fleet's access log
    refusals: int = 0  # 429/503 answers before this outcome, each honoured by waiting its Retry-After (retries)

    @property
    def timed_out(self) -> bool:
        return self.status == 0


def poisson_schedule(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process of ``rate_per_s`` over ``duration_s``."""
    rng, at, times = random.Random(seed), 0.0, []
    while True:
        at += rng.expovariate(rate_per_s)
        if at >= duration_s:
            return times
        times.append(at)


RETRY_STATUSES = (429, 503)


async def _send_retrying(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], due: float, start: float, *, retries: int
) -> Outcome:
    """A 429/503 is sent again after its ``Retry-After``, up to ``retries`` times: the part of the official
    ``openai`` client's policy (2 retries by default) that applies to refusals; it also retries 408, 409 and other
    5xx, which a run here counts as failures, and gives up on a ``Retry-After`` over 120 s, which the fleet never
    sends. Latency counts from the first send."""
    first = time.monotonic()
    for refusals in range(retries + 1):
        outcome = await _send(http, url, body, due, start)
        if outcome.status not in RETRY_STATUSES or refusals == retries:
            break
        await asyncio.sleep(float(outcome.retry_after or 1))
    total = time.monotonic() - first
    return dataclasses.replace(outcome, latency_s=total, sent_late_s=first - start - due, refusals=refusals)


async def _send(http: httpx.AsyncClient, url: str, body: dict[str, Any], due: float, start: float) -> Outcome:
    sent = time.monotonic()
    try:
        resp = await http.post(url, json=body)
    except httpx.HTTPError:
        return Outcome(due, sent - start - due, time.monotonic() - sent, 0)
    code = None
    if resp.status_code >= 400:
        try:
            code = resp.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
    latency, headers = time.monotonic() - sent, resp.headers
    return Outcome(
        due,
        sent - start - due,
        latency,
        resp.status_code,
        headers.get("Retry-After"),
        code,
        headers.get("x-request-id"),
    )


async def open_loop(
    url: str,
    body: dict[str, Any],
    rate_per_s: float,
    duration_s: float,
    *,
    seed: int = 0,
    timeout_s: float = 120,
    retries: int = 0,
) -> list[Outcome]:
    """POST ``body`` to ``url`` at Poisson arrivals of ``rate_per_s`` for ``duration_s``; every outcome (each
    request's last, after up to ``retries`` re-sends of a 429/503 honouring its Retry-After)."""
    schedule = poisson_schedule(rate_per_s, duration_s, seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        start, tasks = time.monotonic(), []
        for due in schedule:
            delay = start + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send_retrying(http, url, body, due, start, retries=retries)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    url: str, body: dict[str, Any], concurrency: int, duration_s: float, *, timeout_s: float = 120
) -> tuple[float, list[float]]:
    """``concurrency`` clients back to back for ``duration_s``: (completed requests per second, their latencies)."""
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        start = time.monotonic()

        async def client() -> None:
            while time.monotonic() - start < duration_s:
                sent = time.monotonic()
                resp = await http.post(url, json=body)
                resp.raise_for_status()
                latencies.append(time.monotonic() - sent)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return len(latencies) / (time.monotonic() - start), latencies


ROUTER_ACCESS = re.compile(r"slmfleet_router \S+ (\S+) -- POST \S+ (\d+) ([\d.]+)ms")


def router_seconds(log_text: str) -> dict[str, float]:
    """Request id -> seconds the router replica spent on it, from Serve's access lines in the fleet's log: the
    server's own view, without the client's and the proxy's share of a busy machine."""
    return {m.group(1): float(m.group(3)) / 1000 for m in ROUTER_ACCESS.finditer(log_text)}


PROXY_ACCESS = re.compile(r" proxy \S+ (\S+) -- POST \S+ (\d+) ([\d.]+)ms")
RAY_LOGS = "/tmp/ray"


def proxy_seconds(ray_logs: str = RAY_LOGS) -> dict[str, float]:
    """Request id -> seconds Serve's HTTP proxy spent on it (from receiving it to its last byte), from the proxy
    access logs of every Ray session under ``ray_logs``: the whole server side, without the client's share."""
    seconds: dict[str, float] = {}
    for path in Path(ray_logs).glob("session_*/logs/serve/proxy_*.log"):
        for m in PROXY_ACCESS.finditer(path.read_text(errors="replace")):
            seconds[m.group(1)] = float(m.group(3)) / 1000
    return seconds


def split(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """Outcomes by how they ended: served (200), shed (503/429), timeouts, and other errors."""
    groups: dict[str, list[Outcome]] = {"served": [], "shed": [], "timeouts": [], "other": []}
    for o in outcomes:
        key = (
            "served"
            if o.status == 200
            else "shed"
            if o.status in (429, 503)
            else "timeouts"
            if o.timed_out
            else "other"
        )
        groups[key].append(o)
    return groups
