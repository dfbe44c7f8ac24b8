"""Pipeline overhead: a 4-step pipeline through the router vs the same four engine calls made in one process.

Run by hand: ``.venv/bin/python -m benchmarks.pipeline_overhead [--runs 24] [--concurrency 4] [--modes ...]``.
All sides use one SmolLM2 engine with the default fleet's settings, one after the other in this run. The
pipeline's steps are specialists (intent -> extract -> summarize -> summarize), greedy, so each side decodes the
same tokens. For each Serve mode (``fleet``: as ``slmfleet up`` runs, with ``SERVE_ENV``'s handle-path settings;
``ray-defaults``: Ray Serve's own defaults; ``throughput``: RAY_SERVE_THROUGHPUT_OPTIMIZED=1, direct ingress
included) it prints, side by side with the direct side:

- runs/s and the throughput ratio router/direct;
- added per step, rank-matched: (router run latency - direct run latency) / 4, sorted pairs;
- added per step, paired: (router run latency - the engine time its four calls report) / 4: everything the
  serving path adds (HTTP, proxy, router, runner, handle hops, replica), measured within each run, so free of the
  engine's own run-to-run drift; split into the part outside the steps (HTTP, proxy, router, runner) and the
  part inside them around the engine (handle hop and replica).

Target (issue 4): under 5 ms added per step at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

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
MODES = {
    # what `slmfleet up` runs: Ray's defaults plus cluster.render.common.SERVE_ENV
    "fleet": {},
    # Ray Serve's own defaults for the handle path (what SERVE_ENV changes)
    "ray-defaults": {
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    },
    # Serve's whole throughput-optimized mode, direct ingress (no proxy) included
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


@dataclass
class Side:
    """One side's measurements at one concurrency."""

    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    paired: list[float] = field(default_factory=list)  # per step: run latency minus engine time, / steps
    outside: list[float] = field(default_factory=list)  # per step: run latency minus step latencies, / steps
    around_engine: list[float] = field(default_factory=list)  # per call: step attempt latency minus engine time


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


async def router_side(url: str, inputs: list[str], concurrency: int) -> Side:
    side = Side()
    async with httpx.AsyncClient(timeout=600) as http:

        async def one(message: str) -> None:
            start = time.perf_counter()
            resp = await http.post(f"{url}/v1/pipelines/bench-4/runs", json={"inputs": {"message": message}})
            elapsed = time.perf_counter() - start
            result = resp.json()
            assert result["status"] == "ok", resp.text
            attempts = [a for step in result["steps"] for a in step["attempts"]]
            engine = sum(a["engine_s"] for a in attempts)
            side.paired.append((elapsed - engine) / STEP_COUNT)
            side.outside.append((elapsed - sum(step["latency_s"] for step in result["steps"])) / STEP_COUNT)
            side.around_engine.extend(a["latency_s"] - a["engine_s"] for a in attempts)

        side.rate, side.latencies = await timed_runs(one, inputs, concurrency)
    # the warm-up run is not part of the figures
    del side.paired[0], side.outside[0], side.around_engine[:STEP_COUNT]
    return side


async def direct_side(inputs: list[str], concurrency: int) -> Side:
    from cluster.model_store import resolve_source
    from cluster.spec import load_spec
    from deployments.model.chat_request import build_engine_call
    from deployments.model.engine import ChatEngine, GenerationTally
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
        rate, latencies = await timed_runs(one, inputs, concurrency)
        return Side(rate, latencies)
    finally:
        engine.shutdown()


def report(mode: str, c: int, router: Side, direct: Side, runs: int) -> None:
    rank_matched = [
        (r - d) / STEP_COUNT for r, d in zip(sorted(router.latencies), sorted(direct.latencies), strict=True)
    ]
    print(f"\n[{mode}] concurrency {c}, {runs} runs of {STEP_COUNT} steps")
    print(f"  direct, in-process : {direct.rate:6.2f} runs/s   {summary(direct.latencies)}")
    print(f"  pipeline via router: {router.rate:6.2f} runs/s   {summary(router.latencies)}")
    print(f"  throughput ratio router/direct: {router.rate / direct.rate:.3f}")
    print(f"  added per step, rank-matched : {summary(rank_matched)}")
    print(f"  added per step, paired       : {summary(router.paired)}")
    print(f"    outside the steps, per step: {summary(router.outside)}")
    print(f"    around the engine, per call: {summary(router.around_engine)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--modes", default="fleet,ray-defaults,throughput", help=f"comma-separated, of: {', '.join(MODES)}"
    )
    args = parser.parse_args()
    inputs = [MESSAGES[i % len(MESSAGES)] for i in range(args.runs)]
    levels = (1, args.concurrency)
    modes = args.modes.split(",")
    routed: dict[tuple[str, int], Side] = {}
    for mode in modes:
        with running_fleet(PIPELINE, env=MODES[mode]) as url:
            for c in levels:
                routed[mode, c] = asyncio.run(router_side(url, inputs, c))
    direct = {c: asyncio.run(direct_side(inputs, c)) for c in levels}
    for mode in modes:
        for c in levels:
            report(mode, c, routed[mode, c], direct[c], len(inputs))


if __name__ == "__main__":
    main()
