"""Tool calling on the default fleet: validity, how often ``auto`` picks right, what constrained decoding adds,
and how much of the chat traffic the SLM tier serves with escalation on.

Run by hand: ``.venv/bin/python -m benchmarks.tool_calling [--url URL] [--calls 120] [--ab-concurrency 1 8]``.
Without ``--url`` it starts the default fleet (fleet.yaml: smol and its stand-in LLM tier big) with
``slmfleet up`` on a free port and stops it at the end; with ``--url`` it attaches to a running fleet. Everything
goes through the official ``openai`` client at ``{url}/v1``, every request with a timeout and no retries. Prints,
measured in this one run:

1. validity of ``tool_choice`` ``required`` / named calls on ``smol`` over four realistic function tools
   (strings, integers with bounds, enums, a nested object, an array): a call is valid when its name is an
   offered tool (the named one when named) and its arguments validate against that tool's ``parameters``.
   HTTP errors and escalations are counted apart. Target: 100 %.
2. ``tool_choice: auto`` on a labelled set (a given tool, or a text answer): the share where the model's choice
   matches the label, with a confusion summary. A reported figure, not a target: the model has 135M parameters.
3. the latency constrained tool decoding adds: the same prompts with ``tools`` + ``required`` (parallel calls
   allowed, and ``parallel_tool_calls: false``) vs plain text, same ``max_tokens``, temperature 0, interleaved per
   prompt (the order rotated by one per prompt) to cancel drift; p50/p99, completion tokens (and how many answers
   used all of ``max_tokens``), latency per output token, and the ratios to plain, at each ``--ab-concurrency``.
4. with escalation on (the specialists ``extract`` / ``intent`` and ``smol`` with a ``response_format``): the
   share served by the SLM tier vs the LLM tier, escalations by reason, and cost vs the LLM-tier counterfactual.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import openai
import yaml
from openai import OpenAI

from benchmarks.common import ROOT, percentile, wait_healthy
from tests.ports import free_port


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    _tool(
        "get_weather",
        "Current weather and a short forecast for a city.",
        {
            "city": {"type": "string", "description": "City name, e.g. Lisbon"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "description": "Forecast days"},
        },
        ["city", "unit"],
    ),
    _tool(
        "order_status",
        "Look up the status of a customer's order by its id.",
        {
            "order_id": {"type": "string", "description": "Order id, like A1002"},
            "include_items": {"type": "boolean", "description": "Also list the items in the order"},
        },
        ["order_id"],
    ),
    _tool(
        "create_event",
        "Put an event in the user's calendar.",
        {
            "title": {"type": "string"},
            "start": {
                "type": "object",
                "properties": {
                    "date": {"type": "string", "description": "YYYY-MM-DD"},
                    "time": {"type": "string", "description": "HH:MM, 24-hour"},
                },
                "required": ["date", "time"],
                "additionalProperties": False,
            },
            "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 480},
            "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        ["title", "start", "duration_minutes"],
    ),
    _tool(
        "send_email",
        "Send an email on the user's behalf.",
        {
            "to": {"type": "string", "description": "Recipient's email address"},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        },
        ["to", "subject", "body"],
    ),
]
NAMES = [t["function"]["name"] for t in TOOLS]
BY_NAME = {t["function"]["name"]: t for t in TOOLS}
VALIDATORS = {n: jsonschema.Draft202012Validator(t["function"]["parameters"]) for n, t in BY_NAME.items()}
TEXT = "text"  # the label of a prompt that needs no tool, and the choice of an answer without a call

ASKS = {
    "get_weather": [
        "What's the weather in Lisbon right now, in celsius?",
        "Will it rain in Seattle over the next 3 days? Use fahrenheit.",
        "Give me the 5-day forecast for Osaka in celsius.",
        "How hot is it in Phoenix today? Fahrenheit please.",
        "Check the weather in Berlin for tomorrow.",
        "Is it cold in Oslo this week? I need it in celsius.",
        "I'm flying to Nairobi on Friday; what will the weather be like there for the next 2 days?",
    ],
    "order_status": [
        "Where is my order A1002? It has not arrived.",
        "Can you check order B2741 and list what was in it?",
        "My package C5513 is late. What is its status?",
        "Has order A1009 shipped yet?",
        "Track order D0042 for me, please.",
        "I ordered a kettle, order number E7781. Where is it?",
        "What's going on with order F3310? The tracking page shows nothing.",
    ],
    "create_event": [
        "Book a 30 minute call with Sam on 2025-03-14 at 10:00.",
        "Add 'Dentist' to my calendar on 2025-04-02 at 15:30 for 45 minutes.",
        "Schedule a one-hour team sync on 2025-05-06 at 09:00 with ana@example.com and li@example.com.",
        "Put lunch with Maria on 2025-02-20 at 12:30, 90 minutes.",
        "Create a 2-hour planning meeting on 2025-06-01 at 14:00.",
        "Remind me of the quarterly review on 2025-07-15 at 11:00, 60 minutes, with the finance team.",
        "Set up a 15 minute stand-up on 2025-03-03 at 08:45 with joe@example.com.",
    ],
    "send_email": [
        "Email bob@example.com that the report is ready, subject 'Q3 report'.",
        "Send a high-priority email to it@example.com saying my laptop will not boot.",
        "Write to anna@example.com to thank her for the meeting, subject 'Thanks'.",
        "Email support@shop.example that order A1002 arrived broken.",
        "Send an email to team@example.com: the office is closed on Friday.",
        "Tell carlos@example.com by email that the invoice is attached, low priority.",
        "Let hr@example.com know by email that I will be on leave next week.",
    ],
}
NO_TOOL = [
    "Hello! How are you today?",
    "What is the capital of France?",
    "Tell me a short joke.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "Give me one tip for writing clear emails.",
    "Who wrote Romeo and Juliet?",
    "Explain in one sentence what a tool call is.",
    "Thanks, that's all I needed!",
    "Name three primary colours.",
    "What does HTTP stand for?",
    "Write a haiku about autumn.",
    "Why is the sky blue? One sentence.",
    "Summarise: the meeting moved to Thursday and the budget was approved.",
    "What is the difference between weather and climate?",
    "How do I politely decline a meeting invitation?",
]
AUTO_SET = [(name, prompt) for name, prompts in ASKS.items() for prompt in prompts] + [(TEXT, p) for p in NO_TOOL]

TICKET = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "delivery", "account", "product", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
    },
    "required": ["category", "urgency", "summary"],
    "additionalProperties": False,
}
EXTRACT_SCHEMA = yaml.safe_load((ROOT / "fleet.yaml").read_text())["specialists"]["extract"]["output"]["json_schema"]
INTENTS = ["refund", "order_status", "technical_issue", "other"]
PEOPLE = [
    "Maria Lopez, 34, moved from Porto to Lisbon last year.",
    "Tom Baker is 61 and lives in Leeds with his two dogs.",
    "Our new hire, Aiko Tanaka (29), is based in Osaka.",
    "Carlos Ruiz, aged 45, writes from Mexico City about his account.",
    "Priya Shah lives in Pune; she turned 38 in May.",
]
SUPPORT = [
    "I want my money back, the blender stopped working after a day.",
    "Where is my order A1002? It was due on Monday.",
    "The app crashes every time I open the settings page.",
    "Do you sell gift cards?",
    "I was charged twice for the same subscription this month.",
    "My parcel says delivered but nothing is at my door.",
]


def ticket_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET}}


# ---------------------------------------------------------------------------------------------------------------
# the fleet and one call


@contextlib.contextmanager
def default_fleet(spec: Path) -> Iterator[str]:
    """``slmfleet up --spec fleet.yaml`` on a free port (retried when the port is taken in the meantime); yields
    its URL once /healthz is 200, and stops it (SIGTERM, then SIGKILL of its process group) whatever happens."""
    work = Path(tempfile.mkdtemp(prefix="slmfleet-tools-"))
    proc, log, url = None, work / "fleet.log", ""
    try:
        for attempt in range(3):
            port, log = free_port(), work / f"fleet-{attempt}.log"
            cmd = [sys.executable, "-m", "cluster.cli", "up", "--spec", str(spec), "--port", str(port)]
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            url = f"http://127.0.0.1:{port}"
            with contextlib.suppress(SystemExit):
                wait_healthy(url, proc, log)
                break
            if "the port is in use" not in log.read_text(errors="replace"):
                raise SystemExit(f"the fleet did not come up; its log:\n{log.read_text(errors='replace')[-3000:]}")
        else:
            raise SystemExit("three fleets in a row found their port taken")
        print(f"fleet up at {url} (log: {log})", flush=True)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


@dataclass
class Call:
    """One chat completion: the reply or the error, and the client latency."""

    reply: Any = None
    error: str | None = None
    latency_s: float = 0.0

    @property
    def report(self) -> dict:
        return (self.reply.model_extra or {}).get("slmfleet", {}) if self.reply is not None else {}

    @property
    def tool_calls(self) -> list:
        return self.reply.choices[0].message.tool_calls or [] if self.reply is not None else []


def chat(client: OpenAI, **request: Any) -> Call:
    start = time.perf_counter()
    try:
        reply = client.chat.completions.create(temperature=0.0, **request)
    except openai.APIStatusError as exc:
        return Call(error=f"HTTP {exc.status_code}: {exc.message[:160]}", latency_s=time.perf_counter() - start)
    except openai.APIError as exc:  # timeout, connection refused or reset
        return Call(error=f"{type(exc).__name__}: {str(exc)[:160]}", latency_s=time.perf_counter() - start)
    return Call(reply=reply, latency_s=time.perf_counter() - start)


def run_all(fn: Callable[[Any], Call], items: list, concurrency: int) -> list[Call]:
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(fn, items))


def escalation_reasons(calls: list[Call]) -> Counter:
    return Counter(
        f"{e['from_model']}->{e['to_model']} {e['reason']}" for c in calls for e in c.report.get("escalations", [])
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. validity of required / named tool calls


def validity_requests(count: int, max_tokens: int) -> list[tuple[dict, set[str], str | None]]:
    """(request, offered names, named tool) for ``count`` calls: the asked tool's prompts in turn, all four tools
    or the asked one plus its neighbour, and four modes: required, required one call, named the asked tool,
    named another offered tool."""
    asks = [(name, ASKS[name][i]) for i in range(min(map(len, ASKS.values()))) for name in NAMES]
    out = []
    for i in range(count):
        asked, prompt = asks[i % len(asks)]
        other = NAMES[(NAMES.index(asked) + 1) % len(NAMES)]
        offered = NAMES if (i // len(asks)) % 2 == 0 else [asked, other]
        mode = (i + i // len(asks)) % 4  # each pass over the prompts shifts their modes by one
        named = {2: asked, 3: other}.get(mode)
        request: dict[str, Any] = {
            "model": "smol",
            "messages": [{"role": "user", "content": prompt}],
            "tools": [BY_NAME[n] for n in offered],
            "tool_choice": {"type": "function", "function": {"name": named}} if named else "required",
            "max_tokens": max_tokens,
        }
        if mode in (1, 3):
            request["parallel_tool_calls"] = False
        out.append((request, set(offered), named))
    return out


def check_calls(calls: list, offered: set[str], named: str | None, single: bool) -> str | None:
    """Why the answer's tool calls are not valid, or None when they are."""
    if not calls:
        return "no tool call"
    if single and len(calls) > 1:
        return f"{len(calls)} calls with parallel_tool_calls false"
    for call in calls:
        name = call.function.name
        if name not in offered or (named and name != named):
            return f"name {name!r} not allowed"
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            return f"arguments not JSON: {call.function.arguments[:80]!r}"
        error = next(VALIDATORS[name].iter_errors(arguments), None)
        if error is not None:
            return f"{name}: {error.message[:100]}"
    return None


def bench_validity(client: OpenAI, args: argparse.Namespace) -> dict:
    requests = validity_requests(args.calls, args.tool_max_tokens)
    calls = run_all(lambda r: chat(client, **r[0]), requests, args.concurrency)
    problems: Counter = Counter()
    failures: list[str] = []
    valid = tool_call_count = 0
    for (request, offered, named), call in zip(requests, calls, strict=True):
        if call.error:
            failures.insert(0, f"{describe(request)}\n     -> {call.error}")  # errors first
            continue
        single = request.get("parallel_tool_calls") is False
        problem = check_calls(call.tool_calls, offered, named, single)
        tool_call_count += len(call.tool_calls)
        if call.reply.choices[0].finish_reason != "tool_calls":
            problem = problem or f"finish_reason {call.reply.choices[0].finish_reason}"
        valid += problem is None
        problems.update([problem] if problem else [])
        failures.extend([f"{describe(request)}\n     -> {problem}"] if problem else [])
    errors = Counter(c.error for c in calls if c.error)
    answered = len(calls) - sum(errors.values())
    escalated = sum(1 for c in calls if c.report.get("escalations"))
    full = Counter(
        "parallel off" if r[0].get("parallel_tool_calls") is False else "parallel on"
        for r, c in zip(requests, calls, strict=True)
        if c.reply is not None and c.reply.usage.completion_tokens >= args.tool_max_tokens
    )
    print(f"\n1. tool-call validity: {len(calls)} calls on smol (required / named, parallel on and off)")
    print(f"   valid answers      : {valid}/{answered} answered = {pct(valid, answered)}   (target 100 %)")
    print(f"   valid of all sent  : {valid}/{len(calls)} = {pct(valid, len(calls))}")
    print(f"   tool calls returned: {tool_call_count} ({tool_call_count / max(answered, 1):.2f} per answer)")
    print(f"   used all max_tokens: {full.total()} answers {dict(full)} (max_tokens {args.tool_max_tokens})")
    print(f"   HTTP/client errors : {sum(errors.values())}  {dict(errors) or ''}")
    print(f"   escalated to big   : {escalated}  {dict(escalation_reasons(calls)) or ''}")
    for problem, n in problems.most_common(8):
        print(f"   invalid x{n}: {problem}")
    for failure in failures[:6]:
        print(f"   failed: {failure}")
    return {"valid": valid, "answered": answered, "sent": len(calls), "errors": sum(errors.values())}


def describe(request: dict) -> str:
    """A failed request in one line, enough to send it again."""
    choice = request["tool_choice"]
    choice = choice if isinstance(choice, str) else f"named {choice['function']['name']}"
    offered = [t["function"]["name"] for t in request["tools"]]
    parallel = "off" if request.get("parallel_tool_calls") is False else "on"
    prompt = request["messages"][-1]["content"]
    return f"tool_choice {choice}, parallel {parallel}, tools {offered}, max_tokens {request['max_tokens']}: {prompt!r}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


# ---------------------------------------------------------------------------------------------------------------
# 2. auto: does the model pick right?


def auto_choice(call: Call) -> str:
    if call.error:
        return "error"
    names = [c.function.name for c in call.tool_calls]
    return names[0] if names else TEXT


def bench_auto(client: OpenAI, args: argparse.Namespace) -> dict:
    def ask(item: tuple[str, str]) -> Call:
        messages = [{"role": "user", "content": item[1]}]
        return chat(client, model="smol", messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=96)

    calls = run_all(ask, AUTO_SET, args.concurrency)
    confusion = Counter((label, auto_choice(c)) for (label, _), c in zip(AUTO_SET, calls, strict=True))
    invalid = sum(1 for c in calls if c.tool_calls and check_calls(c.tool_calls, set(NAMES), None, False))
    answered = sum(n for (_, got), n in confusion.items() if got != "error")
    right = sum(n for (label, got), n in confusion.items() if label == got)
    summary = {
        "tool expected, right tool": sum(n for (e, g), n in confusion.items() if e != TEXT and g == e),
        "tool expected, wrong tool": sum(n for (e, g), n in confusion.items() if e != TEXT and g not in (e, TEXT)),
        "tool expected, text given": sum(n for (e, g), n in confusion.items() if e != TEXT and g == TEXT),
        "text expected, text given": confusion[TEXT, TEXT],
        "text expected, tool given": sum(n for (e, g), n in confusion.items() if e == TEXT and g not in (TEXT,)),
    }
    print(f"\n2. tool_choice auto on a labelled set: {len(AUTO_SET)} prompts ({len(NO_TOOL)} need no tool)")
    print(f"   matches label: {right}/{answered} = {pct(right, answered)}   (reported; a 135M model)")
    print(f"   errors: {len(calls) - answered}   auto calls failing their schema: {invalid}")
    for key, n in summary.items():
        print(f"   {key:28s}: {n}")
    print_confusion(confusion)
    return {"right": right, "answered": answered}


def print_confusion(confusion: Counter) -> None:
    columns = [*NAMES, TEXT, "error"]
    print("   expected \\ chosen " + "".join(f"{c[:12]:>13s}" for c in columns))
    for label in [*NAMES, TEXT]:
        print(f"   {label:19s}" + "".join(f"{confusion[label, c]:>13d}" for c in columns))


# ---------------------------------------------------------------------------------------------------------------
# 3. latency added by constrained tool decoding

AB_SIDES = ("tools", "tools-1", "plain")  # required with parallel calls (the default), required one call, text


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    errors: int = 0

    def add(self, call: Call) -> None:
        if call.error:
            self.errors += 1
            return
        self.latencies.append(call.latency_s)
        self.completion.append(call.reply.usage.completion_tokens)
        self.prompt.append(call.reply.usage.prompt_tokens)
        self.calls.append(len(call.tool_calls))

    def ms_per_token(self) -> float:
        return 1000 * sum(self.latencies) / max(1, sum(self.completion))

    def row(self, name: str, max_tokens: int) -> str:
        if not self.latencies:
            return f"   {name:8s}  0   (every call failed: {self.errors} errors)"
        p50, p99 = (1000 * percentile(self.latencies, q) for q in (50, 99))
        cut = sum(n >= max_tokens for n in self.completion)
        return (
            f"   {name:8s}{len(self.latencies):3d} {p50:8.1f} {p99:8.1f} {statistics.mean(self.completion):9.1f}"
            f" {cut:5d} {statistics.mean(self.calls):6.2f} {statistics.mean(self.prompt):10.1f}"
            f" {self.ms_per_token():10.1f} {self.errors:6d}"
        )


def ab_set(client: OpenAI, prompt: str, index: int, max_tokens: int) -> dict[str, Call]:
    """Every side for one prompt, back to back, the order rotated by one per prompt to cancel drift."""
    base = {"model": "smol", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    tools = {**base, "tools": TOOLS, "tool_choice": "required"}
    requests = {"tools": tools, "tools-1": {**tools, "parallel_tool_calls": False}, "plain": base}
    shift = index % len(AB_SIDES)
    order = AB_SIDES[shift:] + AB_SIDES[:shift]
    return {side: chat(client, **requests[side]) for side in order}


def bench_latency(client: OpenAI, args: argparse.Namespace, concurrency: int) -> dict:
    prompts = [prompt for label, prompt in AUTO_SET if label != TEXT]
    prompts = [prompts[i % len(prompts)] for i in range(args.ab_prompts)]
    ab_set(client, "warm up: weather in Rome?", 0, args.ab_max_tokens)
    sets = run_all(
        lambda item: ab_set(client, item[1], item[0], args.ab_max_tokens), [*enumerate(prompts)], concurrency
    )
    sides = {name: Side() for name in AB_SIDES}
    for one in sets:
        for name, call in one.items():
            sides[name].add(call)
    print(
        f"\n3. constrained tool decoding vs plain: {len(prompts)} prompts x {len(AB_SIDES)}, interleaved, "
        f"concurrency {concurrency}, max_tokens {args.ab_max_tokens}, temperature 0"
    )
    print("   tools: required, parallel calls allowed; tools-1: required, parallel_tool_calls false; plain: no tools")
    print("   side      n   p50 ms   p99 ms  compl tok  =max  calls  prompt tok  ms/out tok errors")
    for name, side in sides.items():
        print(side.row(name, args.ab_max_tokens))
    ratios = {name: latency_ratios(sides[name], sides["plain"]) for name in AB_SIDES[:-1]}
    for name, ratio in ratios.items():
        print(f"   ratio {name}/plain: " + ("  ".join(f"{k} {v:.2f}" for k, v in ratio.items()) or "n/a"))
    escalated = escalation_reasons([c for one in sets for c in one.values()])
    print(f"   escalations during the A/B: {sum(escalated.values())} {dict(escalated) or ''}")
    return ratios


def latency_ratios(tools: Side, plain: Side) -> dict[str, float]:
    if not tools.latencies or not plain.latencies:
        return {}
    return {
        "p50": percentile(tools.latencies, 50) / percentile(plain.latencies, 50),
        "p99": percentile(tools.latencies, 99) / percentile(plain.latencies, 99),
        "completion tokens": statistics.mean(tools.completion) / max(statistics.mean(plain.completion), 1e-9),
        "ms/out token": tools.ms_per_token() / max(plain.ms_per_token(), 1e-9),
    }


# ---------------------------------------------------------------------------------------------------------------
# 4. share served on the SLM tier with escalation on


def share_request(i: int) -> tuple[dict, Callable[[str], bool]]:
    """The i-th extraction / classification call and a check of its answer's contract."""
    kind = i % 3
    if kind == 0:
        messages = [{"role": "user", "content": PEOPLE[i // 3 % len(PEOPLE)]}]
        return {"model": "extract", "messages": messages}, lambda text: json_valid(text, EXTRACT_SCHEMA)
    message = SUPPORT[i // 3 % len(SUPPORT)]
    if kind == 1:
        return {"model": "intent", "messages": [{"role": "user", "content": message}]}, lambda text: text in INTENTS
    prompt = f"Classify this support ticket and summarise it: {message}"
    request = {"model": "smol", "messages": [{"role": "user", "content": prompt}], "response_format": ticket_format()}
    return {**request, "max_tokens": 96}, lambda text: json_valid(text, TICKET)


def json_valid(text: str | None, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def bench_share(client: OpenAI, args: argparse.Namespace) -> dict:
    items = [share_request(i) for i in range(args.share_calls)]
    calls = run_all(lambda item: chat(client, **item[0]), items, args.concurrency)
    ok = [(c, check) for c, (_, check) in zip(calls, items, strict=True) if not c.error]
    served = Counter(c.report.get("served_by", "?") for c, _ in ok)
    by_target = Counter(
        (item[0]["model"], "error" if c.error else c.report.get("served_by", "?"))
        for c, item in zip(calls, items, strict=True)
    )
    contract_ok = sum(check(c.reply.choices[0].message.content) for c, check in ok)
    cost = sum(c.report.get("cost", {}).get("total") or 0.0 for c, _ in ok)
    counterfactual = sum(c.report.get("cost", {}).get("llm_counterfactual") or 0.0 for c, _ in ok)
    reasons = escalation_reasons(calls)
    errors = Counter(c.error for c in calls if c.error)
    print(f"\n4. share served on the SLM tier, escalation on: {len(calls)} calls (extract, intent, smol+schema)")
    print(f"   served by smol: {served['smol']}/{len(ok)} = {pct(served['smol'], len(ok))}   big: {served['big']}")
    print("   per target: " + ", ".join(f"{t}->{s} {n}" for (t, s), n in sorted(by_target.items())))
    print(f"   escalations by reason: {sum(reasons.values())} {dict(reasons) or ''}")
    print(f"   answers meeting their contract (client-side check): {contract_ok}/{len(ok)}")
    print(f"   HTTP/client errors: {sum(errors.values())} {dict(errors) or ''}")
    print(
        f"   cost ${cost:.6f} vs LLM tier ${counterfactual:.6f} = {cost / counterfactual if counterfactual else 0:.3f}"
    )
    return {"smol": served["smol"], "answered": len(ok), "cost": cost, "counterfactual": counterfactual}


# ---------------------------------------------------------------------------------------------------------------


def print_table(results: dict) -> None:
    rows = []
    v = results["validity"]
    rows.append(
        ("tool-call validity (required/named)", f"{v['valid']}/{v['answered']} = {pct(v['valid'], v['answered'])}")
    )
    rows.append(("  HTTP/client errors", str(v["errors"])))
    a = results["auto"]
    rows.append(("auto picks the labelled choice", f"{a['right']}/{a['answered']} = {pct(a['right'], a['answered'])}"))
    for concurrency, by_side in results["latency"].items():
        for side, ratios in by_side.items():
            text = "  ".join(f"{k} {r:.2f}" for k, r in ratios.items()) or "n/a"
            rows.append((f"{side}/plain, concurrency {concurrency}", text))
    s = results["share"]
    rows.append(("served on smol (escalation on)", f"{s['smol']}/{s['answered']} = {pct(s['smol'], s['answered'])}"))
    ratio = f"{s['cost'] / s['counterfactual']:.3f}" if s["counterfactual"] else "n/a"
    rows.append(("cost / LLM-tier counterfactual", ratio))
    width = max(len(r[0]) for r in rows)
    print("\nresults")
    for name, value in rows:
        print(f"  {name:{width}s}  {value}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="attach to a running fleet (default: start fleet.yaml on a free port)")
    parser.add_argument("--spec", type=Path, default=ROOT / "fleet.yaml", help="spec of the fleet started here")
    parser.add_argument("--calls", type=int, default=120, help="tool calls checked for validity")
    parser.add_argument("--tool-max-tokens", type=int, default=96, help="max_tokens of the validity calls")
    parser.add_argument("--ab-prompts", type=int, default=12, help="prompts of the tools/plain latency A/B")
    # 96, not 64: the fleet sizes every offered tool's arguments to fit max_tokens, and create_event (a nested
    # object, an array, bounded integers) needs about 78 before its shortest answer fits: below that, a 400
    parser.add_argument("--ab-max-tokens", type=int, default=96)
    parser.add_argument("--ab-concurrency", type=int, nargs="+", default=[1], help="e.g. 1 8")
    parser.add_argument("--share-calls", type=int, default=60, help="calls of the SLM-share part")
    parser.add_argument("--concurrency", type=int, default=4, help="of the validity, auto and share parts")
    parser.add_argument("--timeout", type=float, default=120, help="per request, seconds")
    return parser.parse_args()


def run(url: str, args: argparse.Namespace) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=args.timeout)
    started = time.perf_counter()
    results = {"validity": bench_validity(client, args), "auto": bench_auto(client, args)}
    results["latency"] = {c: bench_latency(client, args, c) for c in args.ab_concurrency}
    results["share"] = bench_share(client, args)
    print_table(results)
    print(f"  {'benchmark wall time':35s}  {time.perf_counter() - started:.0f} s")


def print_policies(spec_path: Path) -> None:
    """The escalation policies of the spec started here, which parts 1 and 4 depend on."""
    spec = yaml.safe_load(spec_path.read_text())
    named = {**spec.get("models", {}), **spec.get("specialists", {})}
    for name in ("smol", "extract", "intent"):
        policy = named.get(name, {}).get("escalation")
        print(f"escalation policy of {name}: {policy or 'none'}")


def main() -> None:
    args = parse_args()
    if args.url:
        run(args.url.rstrip("/"), args)
        return
    print_policies(args.spec)
    with default_fleet(args.spec) as url:
        run(url, args)


if __name__ == "__main__":
    main()
