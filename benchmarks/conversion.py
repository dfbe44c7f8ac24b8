"""The conversion loop end to end, through its own commands: time per stage, PII removed by kind, task discovery
against the truth, held-out validity and agreement of the base SLM, the adapter and the LLM tier, hot-load time,
and cost per call of each task before (LLM tier) and after promotion (its specialist).

Run by hand: ``.venv/bin/python -m benchmarks.conversion [--per-task 40] [--train 1] [--steps 40]``.

The fleet is smol (with LoRA slots) and ``oracle``, its LLM tier: a model served by an outside OpenAI-compatible
API (``endpoint``), here the good LLM of ``tests/good_llm.py``, which answers each generated prompt rightly
(``tests/conversion_traffic.py``). The traffic goes through the router as a user's would (extraction calls with
their JSON schema) and is sealed into the usage log by it. ``--train`` tasks are trained (the rest only scored) on
this machine's CPU; each kept adapter is promoted in shadow and goes live once its samples agree with the LLM.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from benchmarks.common import ROOT, running_fleet
from cluster.cli import main as slmfleet
from cluster.convert.sealed_log import generate_key_pair, load_private_key, read_segment, segment_paths
from tests.conversion_traffic import TASKS, Prompt, TrafficGenerator
from tests.good_llm import MODEL_NAME, GoodLLM


def bench_spec(path: Path, public_key: str, log: Path, llm_url: str) -> Path:
    fleet = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    smol = {**fleet["models"]["smol"], "lora": {"max_loras": 4, "max_lora_rank": 8}}
    oracle = {
        "endpoint": {"url": llm_url, "model": MODEL_NAME},
        "tier": "llm",
        "price_per_1k_tokens": fleet["models"]["big"]["price_per_1k_tokens"],  # a hosted 70B-class model's
        "log_usage": True,
    }
    spec = {
        "models": {"smol": smol, "oracle": oracle},
        "usage_log": {"public_key": public_key, "destination": str(log), "segment_max_age_s": 5},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def ask(url: str, prompt: Prompt, llm: GoodLLM) -> dict:
    """One plain call to the LLM-tier model, the prompt's right answer taught to the good LLM first."""
    llm.learn([prompt])
    body = {"model": "oracle", "messages": prompt.messages, "max_tokens": 48, "temperature": 0.0}
    if prompt.response_format:
        body["response_format"] = prompt.response_format
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    reply.raise_for_status()
    return reply.json()


def seed_log(url: str, llm: GoodLLM, per_task: int, log: Path, private: Path) -> tuple[dict[str, str], list[str]]:
    """The generator's calls through the router to the LLM tier, once the log holds them all; returns each call's
    true task and the PII planted."""
    truth, planted = {}, []
    for prompt in TrafficGenerator(seed=1).prompts(per_task):
        truth[ask(url, prompt, llm)["id"]] = prompt.task
        planted += prompt.pii
    key, deadline = load_private_key(private), time.monotonic() + 60
    while time.monotonic() < deadline:
        if truth.keys() <= {r["request_id"] for path in segment_paths(log) for r in read_segment(path, key)}:
            break
        time.sleep(1)
    return truth, planted


def timed(label: str, argv: list[str], times: dict[str, float]) -> None:
    started = time.perf_counter()
    status = slmfleet(argv)
    times[label] = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"slmfleet {' '.join(argv)} exited {status}")


def discovery_score(work: Path, truth: dict[str, str]) -> float:
    from sklearn.metrics import adjusted_rand_score

    clusters = json.loads((work / "clusters.json").read_text())
    found = {m: t["id"] for t in clusters["tasks"] for m in t["members"]}
    ids = sorted(truth)
    return adjusted_rand_score([truth[i] for i in ids], [found.get(i, -1) for i in ids])


def keep_first_tasks(work: Path, count: int) -> None:
    """Train only the first ``count`` tasks: the others are marked as served as they are (scored, not trained)."""
    choices = json.loads((work / "choices.json").read_text())
    for index, task in enumerate(choices["tasks"]):
        if index >= count and task["decision"] == "train":
            task["decision"] = "skipped"
    (work / "choices.json").write_text(json.dumps(choices, indent=2))


def cost_per_call(url: str, prompts: list, llm: GoodLLM) -> tuple[float, str, str]:
    """Mean cost of plain calls to the LLM-tier model, who served them, and the router's matching time."""
    costs, served, match_ms = [], Counter(), []
    for p in prompts:
        report = ask(url, p, llm)["slmfleet"]
        costs.append(report["cost"]["total"])
        served[report["served_by"]] += 1
        if "promotion" in report:
            match_ms.append(report["promotion"]["match_ms"])
    matching = f"match {min(match_ms):.1f}-{max(match_ms):.1f} ms" if match_ms else "no match"
    return sum(costs) / len(costs), ", ".join(f"{n}/{len(prompts)} by {m}" for m, n in served.items()), matching


def true_task(loop: Path, name: str, truth: dict[str, str]) -> str:
    """The generator's task type most of a discovered task's members have."""
    (task,) = [t for t in json.loads((loop / "clusters.json").read_text())["tasks"] if t["name"] == name]
    return Counter(truth[m] for m in task["members"]).most_common(1)[0][0]


def until_live(url: str, llm: GoodLLM, task_types: set[str], names: list[str], within_s: float = 180) -> float:
    """Seconds of fresh traffic of the promoted tasks until every promotion in ``names`` is live (its shadow
    samples agreeing with the LLM; the router first loads its embedding model in a thread); -1 if never."""
    generator, started = TrafficGenerator(seed=10), time.monotonic()
    while time.monotonic() - started < within_s:
        listed = httpx.get(f"{url}/admin/promotions", timeout=30).json()["promotions"]
        if {p["task"] for p in listed if p["phase"] == "live"} >= set(names):
            return round(time.monotonic() - started, 1)
        for task in sorted(task_types):
            ask(url, getattr(generator, task)(), llm)
    return -1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", type=int, default=40)
    parser.add_argument("--train", type=int, default=1, help="how many tasks to train (about a minute each here)")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slmfleet-convert-bench-"))
    private, public = generate_key_pair(work / "keys")
    llm = GoodLLM()
    spec = bench_spec(work / "fleet.yaml", public, work / "log", llm.url)
    loop, times = work / "loop", {}
    common = ["--spec", str(spec), "--work", str(loop)]
    with running_fleet(spec=spec, work=work) as url:
        truth, planted = seed_log(url, llm, args.per_task, work / "log", private)
        timed("S2 curate", ["convert", "curate", *common, "--key", str(private)], times)
        timed("S3 discover", ["convert", "discover", *common], times)
        timed("S4 choose", ["convert", "choose", *common, "--url", url], times)
        keep_first_tasks(loop, args.train)
        timed("S5 train", ["convert", "train", *common, "--steps", str(args.steps)], times)
        timed("S6 gate", ["convert", "gate", *common, "--url", url], times)
        gate = json.loads((loop / "gate.json").read_text())["adapters"]
        fresh = TrafficGenerator(seed=9).prompts(8)
        samples = {v["name"]: [p for p in fresh if p.task == true_task(loop, v["name"], truth)] for v in gate}
        before = {name: cost_per_call(url, prompts, llm) for name, prompts in samples.items()}
        timed("S6 promote", ["convert", "promote", *common, "--url", url], times)
        kept = [v["name"] for v in gate if v["kept"]]
        kept_types = {true_task(loop, name, truth) for name in kept}
        times["shadow to live"] = until_live(url, llm, kept_types, kept)
        after = {name: cost_per_call(url, prompts, llm) for name, prompts in samples.items()}
        moved = {p.task for prompts in samples.values() for p in prompts}
        rest = [p for p in fresh if p.task not in moved]
        untouched = cost_per_call(url, rest, llm) if rest else (0.0, "-", "-")
    llm.close()
    print(f"tasks not promoted, after: served by {untouched[1]} ({untouched[2]})")
    written = "".join(
        p.read_text(errors="replace") for p in loop.rglob("*") if p.is_file() and p.suffix != ".safetensors"
    )
    leaked = sum(value in written for value in planted)
    report(work, times, truth, leaks=(leaked, len(planted)), gate=gate, costs=(before, after))


def report(work: Path, times: dict, truth: dict, *, leaks: tuple[int, int], gate: list, costs: tuple) -> None:
    loop = work / "loop"
    curation = json.loads((loop / "curation-report.json").read_text())
    print(f"work folder: {work}")
    for stage, seconds in times.items():
        print(f"  {stage:12s} {seconds:7.1f} s")
    print(f"PII removed by kind: {curation['pii_removed']}; planted values in the loop's files: {leaks[0]}/{leaks[1]}")
    print(f"dropped: {curation['dropped']}; kept {curation['kept']} of {curation['read']}")
    print(f"task discovery: adjusted Rand index {discovery_score(loop, truth):.3f} against {len(TASKS)} task types")
    for task in json.loads((loop / "choices.json").read_text())["tasks"]:
        print(f"  {task['name']}: {task['decision']}; zero-shot {task['scores']}")
    for v in gate:
        print(f"  gate {v['name']}: base {v['base']} adapter {v['adapter_score']} LLM validity {v['llm_validity']} "
              f"hot-load {v['hot_load_s']} s kept {v['kept']}")  # fmt: skip
    before, after = costs
    for name, (cost, served, _) in before.items():
        now, now_served, matching = after[name]
        print(f"  cost per call of {name}: before {cost:.6f} ({served}), after {now:.6f} ({now_served}, {matching}), "
              f"ratio {now / cost:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
