"""LoRA adapter specialists: hot-load time, throughput with 1, 4 and 16 adapters interleaved, memory per adapter.

Run by hand: ``.venv/bin/python -m benchmarks.adapters [--seconds 20] [--concurrency 8] [--adapters 16]``.
One fleet, two deployments of the bundled SmolLM2 side by side: ``plain`` (no LoRA) and ``tuned`` (16 LoRA slots
of rank 8, 32 cached). Adapters are made by peft (random weights, rank 8 on q/v, about 1.8 MB each) and registered
at runtime through the admin route, so every figure is of the serving path a user gets:

- hot-load: from ``PUT /admin/adapters/<name>`` (which loads and probes the adapter on a replica) to the first
  answer of that specialist (at most 32 tokens), and to that answer's first token (streamed), p50/p99 over the
  adapters; no replica starts (the engine's pid is checked);
- throughput: closed loop at ``--concurrency`` for ``--seconds`` per case, output tokens/s, for the base model on
  ``plain``, the base model on ``tuned`` (what enabling LoRA costs), and 1, 4 and 16 adapters round-robin on
  ``tuned``; ratios against base-only on ``tuned``, measured in this one run;
- memory: resident memory of the ``tuned`` replica's process tree before the first adapter and after all are
  loaded, divided by the adapter count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from benchmarks.common import PROMPTS, ROOT, percentile, replica_process, running_fleet
from tests.adapters import make_adapter

MAX_TOKENS = 32


def bench_spec(path: Path) -> Path:
    smol = yaml.safe_load((ROOT / "fleet.yaml").read_text())["models"]["smol"]
    tuned = {**smol, "lora": {"max_loras": 16, "max_lora_rank": 8, "max_cpu_loras": 32}}
    path.write_text(yaml.safe_dump({"models": {"plain": smol, "tuned": tuned}}, sort_keys=False))
    return path


def rss_gib(deployment: str) -> float:
    """Resident memory of a replica and its engine processes."""
    replica = replica_process(deployment)
    return sum(p.memory_info().rss for p in [replica, *replica.children(recursive=True)]) / 1024**3


async def chat(http: httpx.AsyncClient, model: str, prompt: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}
    answer = await http.post("/v1/chat/completions", json=body)
    answer.raise_for_status()
    return answer.json()["usage"]["completion_tokens"]


async def streamed(http: httpx.AsyncClient, model: str, prompt: str) -> tuple[float, int]:
    """Streams one answer to its end; returns the seconds from the call to its first text, and its tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            content = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
            if first is None and content:
                first = time.perf_counter() - started
    return (first if first is not None else time.perf_counter() - started), tokens


@dataclass
class HotLoad:
    """One registration's timings (seconds from the registration call) and its specialist's first answer."""

    registered: float  # load, shape check, probe, store
    first_token: float  # the first answer's first token (streamed)
    answered: float  # the first answer complete
    answer_tokens: int
    base_answer: float  # a base-model answer right after, for scale


async def hot_load(url: str, folders: list[Path]) -> list[HotLoad]:
    """Per registration, the :class:`HotLoad` timings. The first answer's length is the adapter's doing (random
    weights: some stop after about 10 tokens, some run to ``MAX_TOKENS``), and a CPU LoRA decode is slow, so the
    complete answer varies with it; the registration and the first token do not."""
    times = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for index, folder in enumerate(folders):
            started = time.perf_counter()
            put = await http.put(
                f"/admin/adapters/a{index}", json={"model": "tuned", "adapter": {"source": str(folder)}}
            )
            put.raise_for_status()
            registered = time.perf_counter() - started
            to_token, tokens = await streamed(http, f"a{index}", PROMPTS[0])
            answered = time.perf_counter() - started
            await chat(http, "tuned", PROMPTS[0])
            base = time.perf_counter() - started - answered
            times.append(HotLoad(registered, registered + to_token, answered, tokens, base))
    return times


async def throughput(url: str, models: list[str], concurrency: int, seconds: float) -> float:
    """Output tokens/s of a closed loop whose requests go round-robin over ``models``."""
    tokens = 0
    stop_at = time.monotonic() + seconds

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        turn = worker
        while time.monotonic() < stop_at:
            got = await chat(http, models[turn % len(models)], PROMPTS[turn % len(PROMPTS)])
            tokens += got  # not `tokens += await ...`: that reads `tokens` before the await and loses updates
            turn += concurrency

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
    return tokens / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slmfleet-adapters-"))
    folders = [make_adapter(work / f"a{i}", seed=i + 1) for i in range(args.adapters)]
    with running_fleet(work=work, spec=bench_spec(work / "fleet.yaml")) as url:
        asyncio.run(throughput(url, ["plain", "tuned"], 4, 5))  # warm both engines
        engine_pid, before = replica_process("model-tuned").pid, rss_gib("model-tuned")
        timed = asyncio.run(hot_load(url, folders))
        loads = [h.answered for h in timed]
        to_token = [h.first_token for h in timed]
        after = rss_gib("model-tuned")
        assert replica_process("model-tuned").pid == engine_pid, "a replica restarted during hot-load"
        print("hot-load per registration, in order (s): " + ", ".join(f"{t:.2f}" for t in loads))
        print("  of which registration (load + probe + store): " + ", ".join(f"{h.registered:.2f}" for h in timed))
        print("  registration to the answer's first token: " + ", ".join(f"{t:.2f}" for t in to_token))
        print("  the first answer's length (tokens): " + ", ".join(str(h.answer_tokens) for h in timed))
        print("  a base-model answer right after, for scale: " + ", ".join(f"{h.base_answer:.2f}" for h in timed))
        print(
            f"hot-load ({len(loads)} adapters, registration to first answer): p50 {statistics.median(loads):.2f} s, "
            f"p99 {percentile(loads, 99):.2f} s, max {max(loads):.2f} s; to its first token: p50 "
            f"{statistics.median(to_token):.2f} s, p99 {percentile(to_token, 99):.2f} s; no replica started"
        )
        print(
            f"memory: tuned replica {before:.2f} GiB before, {after:.2f} GiB with {len(folders)} adapters loaded: "
            f"{(after - before) * 1024 / len(folders):.1f} MiB per adapter (files: "
            f"{sum(f.stat().st_size for f in folders[0].iterdir()) / 1024**2:.1f} MiB)"
        )
        cases = {
            "base on plain": ["plain"],
            "base on tuned": ["tuned"],
            "1 adapter": ["a0"],
            "4 adapters": [f"a{i}" for i in range(min(4, len(folders)))],
            f"{len(folders)} adapters": [f"a{i}" for i in range(len(folders))],
        }
        rates = {
            name: asyncio.run(throughput(url, models, args.concurrency, args.seconds)) for name, models in cases.items()
        }
    reference = rates["base on tuned"]
    for name, rate in rates.items():
        print(f"{name:>14}: {rate:7.1f} output tokens/s  ({rate / reference:.2f}x base on tuned)")


if __name__ == "__main__":
    main()
