"""Event-loop stall from chat templating and tokenization: inline on the replica's loop vs on the engine's
templating thread (what ``ChatEngine.generate`` does).

Run by hand: ``.venv/bin/python -m benchmarks.templating_stall [--requests 16] [--turns 30]``.
One real SmolLM2 engine in process. Each request is a long chat (``--turns`` user/assistant exchanges and four
tools, about 1,600 prompt tokens) with ``max_tokens`` 1, so the engine's share is one forward pass. While the
requests run at once, a heartbeat task on the same loop wakes every millisecond and records how late it woke: the
loop's stall, which every other request on a replica's loop (the router's health probes, other streams) waits out.
Both modes run in this one process, one after the other, twice each (ABAB), on the same engine. Printed: heartbeat
lateness p50, p99 and max per mode, and the ratio inline/threaded of the p99 and max.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from benchmarks.common import percentile

TOOLS = [
    {"name": f"tool_{i}", "description": f"Look up record kind {i} by id.", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}, "detail": {"type": "boolean"}}, "required": ["id"],
    }}
    for i in range(4)
]  # fmt: skip


def long_chat(turns: int, seed: int) -> list[dict[str, Any]]:
    """A support conversation of ``turns`` exchanges, distinct per request so no cache helps."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a support agent for an online shop."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Request {seed}-{turn}: where is order A{1000 + turn}?"})
        messages.append({"role": "assistant", "content": f"Order A{1000 + turn} left the warehouse on day {turn}."})
    messages.append({"role": "user", "content": "Summarise every order above in one line."})
    return messages


async def heartbeat(stop: asyncio.Event, late_ms: list[float]) -> None:
    """Wake every millisecond; record how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + 0.001
        await asyncio.sleep(0.001)
        late_ms.append((loop.time() - due) * 1000)


class OnTheLoop(Executor):
    """An executor that runs the work where it is submitted: given to ``run_in_executor``, the templating happens
    on the event loop's own thread, as it did before it moved to the engine's templating thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller, as a thread pool would
            future.set_exception(exc)
        return future


async def one_mode(engine: Any, calls: list[Any], inline: bool) -> list[float]:
    """Heartbeat lateness (ms) while ``calls`` run at once, templated on the loop or on the engine's thread."""
    from deployments.model.engine import GenerationTally

    threaded = engine._templating
    engine._templating = OnTheLoop() if inline else threaded
    stop, late_ms = asyncio.Event(), []
    beat = asyncio.create_task(heartbeat(stop, late_ms))

    async def run(call: Any) -> None:
        async for _ in engine.generate(call, GenerationTally()):
            pass

    try:
        await asyncio.gather(*(run(call) for call in calls))
    finally:
        engine._templating = threaded
    stop.set()
    await beat
    return late_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests at once (default 16)")
    parser.add_argument("--turns", type=int, default=30, help="exchanges per chat (default 30)")
    args = parser.parse_args()

    from cluster.model_store import resolve_source
    from cluster.spec import load_spec
    from deployments.model.chat_request import EngineCall
    from deployments.model.engine import ChatEngine
    from deployments.protocol import ToolDef

    spec = load_spec("fleet.yaml")
    engine = ChatEngine.start(resolve_source(spec.models["smol"].source), spec.models["smol"])
    tools = tuple(ToolDef(t["name"], t["description"], t["parameters"]) for t in TOOLS)
    sampling = {"max_tokens": 1, "temperature": 0.0}

    def calls(round_: int) -> list[Any]:
        seeds = range(round_ * 1000, round_ * 1000 + args.requests)
        return [EngineCall(long_chat(args.turns, seed), sampling, None, tools) for seed in seeds]

    one = engine.prompt_ids(calls(0)[0])
    started = time.perf_counter()
    for _ in range(20):
        engine.prompt_ids(calls(0)[0])
    per_call_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"prompt: {len(one)} tokens; templating + tokenization {per_call_ms:.1f} ms a request on this machine")

    async def every_mode() -> dict[str, list[float]]:  # one event loop: vLLM's AsyncLLM is bound to its loop
        await one_mode(engine, calls(99), inline=False)  # warm-up: the engine's first passes are slower
        results: dict[str, list[float]] = {"threaded": [], "inline": []}
        for round_, inline in enumerate((True, False, True, False), start=1):
            results["inline" if inline else "threaded"] += await one_mode(engine, calls(round_), inline)
        return results

    results = asyncio.run(every_mode())
    engine.shutdown()

    for mode, late in results.items():
        print(
            f"{mode:9s}: heartbeat late p50 {statistics.median(late):6.2f} ms  p99 {percentile(late, 99):7.2f} ms"
            f"  max {max(late):7.2f} ms  (n={len(late)})"
        )
    inline, threaded = results["inline"], results["threaded"]
    print(
        f"ratio inline/threaded: p99 {percentile(inline, 99) / percentile(threaded, 99):.2f}x, "
        f"max {max(inline) / max(threaded):.2f}x"
    )


if __name__ == "__main__":
    main()
