"""Pipeline overhead: a 4-step pipeline through the router vs the same four engine calls made in one process.

Run by hand: ``.venv/bin/python benchmarks/pipeline_overhead.py [--runs 24] [--concurrency 4]``.
Both sides use one SmolLM2 engine with the default fleet's settings, one after the other in this run. The
pipeline's steps are specialists (intent -> extract -> summarize -> summarize), greedy, so each side decodes the
same tokens. Prints per-run latency on both sides, the added latency per step (p50, p99) and the throughput
ratio (runs/s router / direct). Target (issue 4): under 5 ms added per step at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from benchmarks.common import running_fleet, summary

STEPS = [("classify", "intent"), ("extract", "extract"), ("summarize", "summarize"), ("again", "summarize")]
# retries: 0, so the pipeline makes exactly the four calls the direct side makes (no retry of a cut-off output)
PIPELINE = {"bench-4": {"escalation": {"retries": 0}, "steps": {name: {"specialist": sp} for name, sp in STEPS}}}
MESSAGES = [
    "Maria, 34, from Lisbon says her order never arrived.",
    "Tom (61, Leeds) wants a refund for a broken kettle.",
    "Aiko, 29, in Osaka cannot log in to the app.",
    "Carlos, 45, Mexico City, asks about gift cards.",
]
STEP_COUNT = len(STEPS)
# Per run and step: client latency minus the time the runner spent inside its steps (HTTP, proxy, router, runner).
OUTSIDE_STEPS: dict[int, list[float]] = {}


async def timed_runs(one, inputs: list[str], concurrency: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def guarded(message: str) -> None:
        async with sem:
            start = time.perf_counter()
            await one(message)
            latencies.append(time.perf_counter() - start)

    await one("warm up")
    start = time.perf_counter()
    await asyncio.gather(*(guarded(m) for m in inputs))
    return len(inputs) / (time.perf_counter() - start), latencies


async def router_side(url: str, inputs: list[str], concurrency: int) -> tuple[float, list[float]]:
    async with httpx.AsyncClient(timeout=600) as http:

        async def one(message: str) -> None:
            start = time.perf_counter()
            resp = await http.post(f"{url}/v1/pipelines/bench-4/runs", json={"inputs": {"message": message}})
            result = resp.json()
            assert result["status"] == "ok", resp.text
            in_steps = sum(step["latency_s"] for step in result["steps"])
            OUTSIDE_STEPS.setdefault(concurrency, []).append((time.perf_counter() - start - in_steps) / STEP_COUNT)

        return await timed_runs(one, inputs, concurrency)


async def direct_side(inputs: list[str], concurrency: int) -> tuple[float, list[float]]:
    from cluster.model_store import resolve_source
    from cluster.spec import load_spec
    from deployments.chat_request import build_engine_call
    from deployments.engine import ChatEngine, GenerationTally
    from deployments.protocol import GenerationRequest

    spec = load_spec("fleet.yaml")
    engine = ChatEngine.start(resolve_source(spec.models["smol"].source), spec.models["smol"])

    async def one(message: str) -> None:
        for _, specialist in STEPS:  # the same four calls the pipeline makes, one after another
            request = GenerationRequest("bench", [{"role": "user", "content": message}], specialist=specialist)
            call = build_engine_call(request, spec.specialists[specialist])
            async for _ in engine.generate(call, GenerationTally(), incremental=False):
                pass

    try:
        return await timed_runs(one, inputs, concurrency)
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    inputs = [MESSAGES[i % len(MESSAGES)] for i in range(args.runs)]
    results = {}
    with running_fleet(PIPELINE) as url:
        for c in (1, args.concurrency):
            results["router", c] = asyncio.run(router_side(url, inputs, c))
    for c in (1, args.concurrency):
        results["direct", c] = asyncio.run(direct_side(inputs, c))
    for c in (1, args.concurrency):
        (r_rate, r_lat), (d_rate, d_lat) = results["router", c], results["direct", c]
        per_step = [(r - d) / STEP_COUNT for r, d in zip(sorted(r_lat), sorted(d_lat), strict=True)]
        print(f"\nconcurrency {c}, {len(inputs)} runs of {STEP_COUNT} steps")
        print(f"  direct, in-process : {d_rate:6.2f} runs/s   {summary(d_lat)}")
        print(f"  pipeline via router: {r_rate:6.2f} runs/s   {summary(r_lat)}")
        print(f"  throughput ratio router/direct: {r_rate / d_rate:.3f}")
        print(f"  added latency per step (rank-matched): {summary(per_step)}")
        print(f"  time outside the steps, per step: {summary(OUTSIDE_STEPS[c])}")


if __name__ == "__main__":
    main()
