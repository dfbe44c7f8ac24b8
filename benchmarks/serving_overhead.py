"""Router overhead: the same prompts through the HTTP router vs straight into an in-process AsyncLLM.

Run by hand: ``.venv/bin/python -m benchmarks.serving_overhead [--requests 32] [--max-tokens 64]``.
Both sides run one SmolLM2 engine with the same settings, one after the other in this run (the machine is too
small to be fair to both at once), at concurrency 1 and 8, greedy decoding with ``ignore_eos`` off: output
lengths match because the text matches. Prints output tokens/s and the ratio router/direct, the latency added
by the router at p50 and p99 (rank-matched against direct), and the router's own time per request (client latency
minus the engine time the replica reports), which separates the serving path from the engine's speed.
Targets (issue 2): throughput ratio >= 0.9, added p50 < 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from benchmarks.common import PROMPTS, running_fleet, summary

# Per request: client latency minus the engine time the model replica measured: HTTP, proxy, router and handle
# hops alone, free of the run-to-run drift of the engine's own speed.
ROUTER_OWN_TIME: dict[int, list[float]] = {}


async def run_router(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    tokens, latencies, own = 0, [], []

    async def one(http: httpx.AsyncClient, prompt: str) -> None:
        nonlocal tokens
        async with sem:
            body = {"model": "smol", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
            start = time.perf_counter()
            resp = await http.post(f"{url}/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - start)
            own.append(latencies[-1] - resp.json()["slmfleet"]["engine_s"])
            tokens += resp.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        await one(http, "warm up")
        latencies.clear()
        own.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(http, p) for p in prompts))
    ROUTER_OWN_TIME[concurrency] = own
    return tokens / (time.perf_counter() - start), latencies


async def run_direct(prompts: list[str], concurrency: int, max_tokens: int) -> tuple[float, list[float]]:
    from cluster.model_store import resolve_source
    from cluster.spec import load_spec
    from deployments.model.chat_request import build_engine_call
    from deployments.model.engine import ChatEngine, GenerationTally
    from deployments.protocol import GenerationRequest

    spec = load_spec("fleet.yaml")
    engine = ChatEngine.start(resolve_source(spec.models["smol"].source), spec.models["smol"])
    sem = asyncio.Semaphore(concurrency)
    tokens, latencies = 0, []

    async def one(prompt: str) -> None:
        nonlocal tokens
        async with sem:
            request = GenerationRequest("bench", [{"role": "user", "content": prompt}], max_tokens=max_tokens)
            tally = GenerationTally()
            start = time.perf_counter()
            async for _ in engine.generate(build_engine_call(request, None), tally, incremental=False):
                pass
            latencies.append(time.perf_counter() - start)
            tokens += tally.completion_tokens

    try:
        await one("warm up")
        latencies.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        return tokens / (time.perf_counter() - start), latencies
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    results = {}
    with running_fleet() as url:
        for concurrency in (1, 8):
            results["router", concurrency] = asyncio.run(run_router(url, prompts, concurrency, args.max_tokens))
    for concurrency in (1, 8):
        results["direct", concurrency] = asyncio.run(run_direct(prompts, concurrency, args.max_tokens))
    for concurrency in (1, 8):
        (r_tps, r_lat), (d_tps, d_lat) = results["router", concurrency], results["direct", concurrency]
        added = sorted(r - d for r, d in zip(sorted(r_lat), sorted(d_lat), strict=True))
        print(f"\nconcurrency {concurrency}, {len(prompts)} requests, max_tokens {args.max_tokens}")
        print(f"  direct AsyncLLM : {d_tps:7.1f} output tok/s   {summary(d_lat)}")
        print(f"  HTTP router     : {r_tps:7.1f} output tok/s   {summary(r_lat)}")
        print(f"  ratio router/direct throughput: {r_tps / d_tps:.3f}")
        print(f"  added latency (router - direct, rank-matched): {summary(added)}")
        print(f"  router's own time (client latency - engine time): {summary(ROUTER_OWN_TIME[concurrency])}")


if __name__ == "__main__":
    main()
