"""Overload: what admitted requests wait and how fast the rest are refused, at twice the measured capacity.

Run by hand: ``.venv/bin/python -m benchmarks.overload [--seconds 180] [--saturation-seconds 30] [--factor 2]``.
One fleet (the default cut to smol, ``benchmarks.common.small_spec``), one run, in order:

1. saturation: a closed loop of ``concurrent_seqs`` clients, back to back: the completed rate is the capacity,
   and its latencies are the baseline;
2. overload: open-loop Poisson arrivals at ``factor`` x that rate for ``seconds`` (``benchmarks.open_loop``).

Printed: admitted p50/p99 next to saturation's and their ratio (target: p99 at most 2x), shed requests and their
latency (target: each under 100 ms), timeouts and 5xx other than 503 (target: 0 each), and Retry-After values;
then the same requests as Serve's proxy and the router timed them (their access logs): the server's side alone,
since on a 2-core machine the client's clock also counts its wait for a core.

``--kill``: instead of the overload, open-loop arrivals at 0.7 x capacity for ``--seconds`` (90 is the issue's
form), and the model's replica process killed (SIGKILL) 30 s in. Printed: requests by outcome (target: 0 failed),
and the time from the kill until ``/healthz`` says the model is ready again (back to full capacity).
``--kill --retries 2``: each refused request is sent again after its ``Retry-After``, up to twice, as the official
``openai`` client does by default; what still fails after that is what its users see.
``--kill --escalate``: the same on the whole default fleet (smol and its escalation target, big), calling the
``extract`` specialist, which escalates to big while smol is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.common import ROOT, percentile, replica_process, running_fleet, small_spec
from benchmarks.open_loop import Outcome, closed_loop, open_loop, proxy_seconds, router_seconds, split

BODY = {
    "model": "smol",
    "messages": [{"role": "user", "content": "Count to twenty."}],
    "max_tokens": 32,
    "temperature": 0.0,
}


EXTRACT_BODY = {"model": "extract", "messages": [{"role": "user", "content": "Alice Martin is 34 and lives in Lyon."}]}


def concurrent_seqs() -> int:
    spec = yaml.safe_load(small_spec(Path(tempfile.mkdtemp()) / "fleet.yaml").read_text())
    return int(spec["models"]["smol"]["concurrent_seqs"])


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:8.0f} ms" if values else "       - ms"


def server_view(outcomes: list[Outcome], log: Path) -> list[str]:
    """The same requests as Serve's proxy (the whole server side) and the router replica timed them (their access
    logs), by how they ended."""
    views = {"proxy": proxy_seconds(), "router": router_seconds(log.read_text(errors="replace"))}
    groups = split(outcomes)
    lines = []
    for side, seconds in views.items():
        for name in ("served", "shed"):
            found = [seconds[o.request_id] for o in groups[name] if o.request_id in seconds]
            lines.append(
                f"  {side}-side {name}: {len(found)} found; p50 {ms(found, 50)}  p99 {ms(found, 99)}  "
                f"max {max(found, default=0) * 1000:.0f} ms"
            )
    return lines


def report(sat_rate: float, sat: list[float], rate: float, outcomes: list, seconds: float) -> list[str]:
    groups = split(outcomes)
    served = [o.latency_s for o in groups["served"]]
    shed = [o.latency_s for o in groups["shed"]]
    late = max((o.sent_late_s for o in outcomes), default=0.0)
    retry_after = collections.Counter(o.retry_after for o in groups["shed"])
    p99_ratio = percentile(served, 99) / percentile(sat, 99) if served else float("nan")
    return [
        f"saturation: {sat_rate:.2f} req/s completed; latency p50 {ms(sat, 50)}  p99 {ms(sat, 99)}",
        f"offered:    {rate:.2f} req/s for {seconds:.0f} s, {len(outcomes)} requests (client lag max {late:.3f} s)",
        f"admitted:   {len(served)} ({len(served) / seconds:.2f} req/s); latency p50 {ms(served, 50)}  "
        f"p99 {ms(served, 99)}; p99 / saturation p99 = {p99_ratio:.2f}x (target <= 2x)",
        f"shed:       {len(shed)} (503/429); latency p50 {ms(shed, 50)}  p99 {ms(shed, 99)}  "
        f"max {max(shed, default=0) * 1000:.0f} ms (target < 100 ms each)",
        f"Retry-After values: {dict(retry_after)}",
        f"timeouts:   {len(groups['timeouts'])} (target 0);  other errors: "
        f"{collections.Counter(o.status for o in groups['other'])} (target none)",
    ]


async def run(url: str, seconds: float, saturation_s: float, factor: float) -> tuple[list[str], list[Outcome]]:
    chat = f"{url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=120) as http:  # warm-up: the engine's first requests are slower
        await asyncio.gather(*(http.post(chat, json=BODY) for _ in range(8)))
    sat_rate, sat = await closed_loop(chat, BODY, concurrent_seqs(), saturation_s)
    outcomes = await open_loop(chat, BODY, factor * sat_rate, seconds, seed=1)
    return report(sat_rate, sat, factor * sat_rate, outcomes, seconds), outcomes


async def kill_and_time_recovery(url: str, after_s: float) -> float:
    """Kill smol's replica ``after_s`` in; seconds from the kill until /healthz reports smol ready again."""
    await asyncio.sleep(after_s)
    replica_process("model-smol").kill()
    killed, seen_down = time.monotonic(), False
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            await asyncio.sleep(1)
            try:
                state = (await http.get(f"{url}/healthz")).json()["models"]["smol"]["state"]
            except (httpx.HTTPError, KeyError, ValueError):
                continue
            seen_down = seen_down or state != "ready"
            if seen_down and state == "ready":
                return time.monotonic() - killed


async def run_kill(url: str, seconds: float, saturation_s: float, body: dict, retries: int) -> list[str]:
    chat = f"{url}/v1/chat/completions"
    sat_rate, _ = await closed_loop(chat, body, concurrent_seqs(), saturation_s)
    rate = 0.7 * sat_rate
    load = asyncio.create_task(open_loop(chat, body, rate, seconds, seed=2, retries=retries))
    recovery_s = await kill_and_time_recovery(url, 30)
    outcomes = await load
    groups = split(outcomes)
    retried = [o for o in groups["served"] if o.refusals]
    return [
        f"model {body['model']!r}: capacity {sat_rate:.2f} req/s; offered {rate:.2f} req/s for {seconds:.0f} s; "
        f"smol's replica killed at 30 s; a refusal is retried after its Retry-After up to {retries} times",
        f"served {len(groups['served'])} ({len(retried)} of them after a refusal), failed: refused (503/429) "
        f"{len(groups['shed'])}, timeouts {len(groups['timeouts'])}, "
        f"other errors {collections.Counter(o.status for o in groups['other'])}",
        f"refusals answered in all (retried or final): {sum(o.refusals for o in outcomes) + len(groups['shed'])}; "
        f"final refusal codes: {collections.Counter(o.code for o in groups['shed'])}",
        f"from the kill to smol ready again: {recovery_s:.1f} s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180, help="overload phase length (default 180)")
    parser.add_argument("--saturation-seconds", type=float, default=30, help="saturation phase (default 30)")
    parser.add_argument("--factor", type=float, default=2.0, help="offered rate / saturation rate (default 2)")
    parser.add_argument("--kill", action="store_true", help="0.7x load and the replica killed 30 s in instead")
    parser.add_argument("--escalate", action="store_true", help="with --kill: the default fleet, an escalating call")
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="with --kill: re-send a 429/503 after its Retry-After up to this many times (the openai client: 2)",
    )
    args = parser.parse_args()
    started, work = time.monotonic(), Path(tempfile.mkdtemp(prefix="slmfleet-overload-"))
    if args.kill:
        spec, body = (ROOT / "fleet.yaml", EXTRACT_BODY) if args.escalate else (None, BODY)
        with running_fleet(work=work, spec=spec) as url:
            print("\n".join(asyncio.run(run_kill(url, args.seconds, args.saturation_seconds, body, args.retries))))
        print(f"wall {time.monotonic() - started:.0f} s")
        return
    with running_fleet(work=work) as url:
        lines, outcomes = asyncio.run(run(url, args.seconds, args.saturation_seconds, args.factor))
        time.sleep(2)  # the last access lines reach the log
        lines += server_view(outcomes, work / "fleet.log")
    print("\n".join(lines))
    print(f"wall {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
