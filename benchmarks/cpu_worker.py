"""Where vLLM's CPU worker runs: inside the engine-core process (``engine.cpu_worker: in_process``, the fleet's
default) or in a process of its own (``own_process``, vLLM's layout on the CPU).

Run by hand: ``.venv/bin/python -m benchmarks.cpu_worker [--rounds 2] [--tokens 32]``.
Each measurement is a fresh Python process that starts one real SmolLM2 engine with the default fleet's ``smol``
settings, the layouts alternating (ABAB...), so both see the same machine. Both decode on the same number of
OpenMP threads (vLLM's own worker gets every core but one; ``ChatEngine.start`` gives an engine core holding the
worker the same). Per layout: engine start-up (from ``AsyncLLM`` creation to ready; imports excluded), output
tokens/s of greedy chats of exactly ``--tokens`` tokens at concurrency 8 and 32, the CPU time the process tree
spent per 1,000 of those tokens, and its unique memory (USS: pages no other process shares) once warm. Printed:
each run, the medians per layout and the ratios in_process/own_process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

LAYOUTS = ("in_process", "own_process")
CONCURRENCY = (8, 32)


def measure(layout: str, tokens: int) -> dict[str, float]:
    """One engine of the given layout, measured in this process (run as a child: a fresh interpreter each time)."""
    import psutil

    from cluster.model_store import resolve_source
    from cluster.spec import load_spec
    from deployments.model.chat_request import EngineCall
    from deployments.model.engine import ChatEngine, GenerationTally

    smol = load_spec("fleet.yaml").models["smol"]
    smol = smol.model_copy(update={"engine": smol.engine.model_copy(update={"cpu_worker": layout})})
    path = resolve_source(smol.source)

    async def run() -> dict[str, float]:
        started = time.perf_counter()
        engine = ChatEngine.start(path, smol)
        result = {"start_s": time.perf_counter() - started}

        async def chat(i: int) -> int:
            sampling = {"max_tokens": tokens, "min_tokens": tokens, "temperature": 0.0}
            call = EngineCall([{"role": "user", "content": f"Tell me story number {i}."}], sampling, None)
            tally = GenerationTally()
            async for _ in engine.generate(call, tally):
                pass
            return tally.completion_tokens

        await chat(0)  # warm-up: the first passes are slower
        tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
        cpu_before, decoded = cpu_seconds(tree), 0
        for concurrency in CONCURRENCY:
            begun = time.perf_counter()
            done = sum(await asyncio.gather(*(chat(i) for i in range(concurrency))))
            result[f"tok_s_c{concurrency}"] = done / (time.perf_counter() - begun)
            decoded += done
        result["cpu_s_per_1k_tok"] = (cpu_seconds(tree) - cpu_before) / decoded * 1000
        result["uss_gib"] = sum(p.memory_full_info().uss for p in tree) / 2**30
        engine.engine.shutdown()
        return result

    return asyncio.run(run())


def cpu_seconds(processes: list) -> float:
    """User and system CPU time of these processes so far (every thread): work done, whether useful or waiting."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def one_run(layout: str, tokens: int) -> dict[str, float]:
    """``measure`` in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, "-m", "benchmarks.cpu_worker", "--child", layout, "--tokens", str(tokens)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{layout} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs per layout, alternating (default 2)")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per chat (default 32)")
    parser.add_argument("--child", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens)))
        return

    runs: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
    for round_ in range(args.rounds):
        for layout in LAYOUTS if round_ % 2 == 0 else reversed(LAYOUTS):
            result = one_run(layout, args.tokens)
            runs[layout].append(result)
            print(f"round {round_ + 1} {layout:11s} " + "  ".join(f"{k} {v:.2f}" for k, v in result.items()))
    medians = {layout: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for layout, rs in runs.items()}
    for layout, values in medians.items():
        print(f"median {layout:11s} " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    inside, own = medians["in_process"], medians["own_process"]
    print("ratio in_process/own_process: " + "  ".join(f"{k} {inside[k] / own[k]:.2f}x" for k in inside))


if __name__ == "__main__":
    main()
