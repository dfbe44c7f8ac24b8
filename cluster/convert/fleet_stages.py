"""The command-line side of S4-S6 (choose, train, gate): each reads the earlier stages' files in the loop's folder,
does its work against the spec and the running fleet, and writes its own file for the next one."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cluster.convert.candidates import choose_for_tasks, llm_validity, read_choices, write_choices
from cluster.convert.commands import EXIT_USAGE, work_folder
from cluster.convert.curate import REPORT_FILE, read_curated
from cluster.convert.discover import accepted_tasks
from cluster.convert.evaluate import Answer, fleet_answerer
from cluster.convert.task_data import split_task
from cluster.spec import load_spec

ADAPTERS_FOLDER = "adapters"


def _api_key(args: argparse.Namespace) -> str | None:
    """The admin-scoped key from ``--api-key-env`` (None on a loopback fleet without keys)."""
    return os.environ.get(args.api_key_env) if args.api_key_env else None


def _answerer(args: argparse.Namespace) -> Any:
    key = _api_key(args)

    def answerer(name: str) -> Answer:
        return fleet_answerer(f"{args.url.rstrip('/')}/v1", name, key or "unused-on-loopback")

    return answerer


def _tasks_to_take(args: argparse.Namespace, work: Path) -> list[dict[str, Any]] | None:
    """The accepted tasks, or those ``--task`` names; None (after saying why) when a name is not an accepted task."""
    tasks = accepted_tasks(work)
    wanted = getattr(args, "task", None)
    if not wanted:
        return tasks
    unknown = sorted(set(wanted) - {t["name"] for t in tasks})
    if unknown:
        names = ", ".join(t["name"] for t in tasks) or "(none)"
        print(f"error: --task {', '.join(unknown)}: not an accepted task; accepted: {names}", file=sys.stderr)
        return None
    return [t for t in tasks if t["name"] in wanted]


def cmd_choose(args: argparse.Namespace) -> int:
    spec, work = load_spec(args.spec), work_folder(args)
    report = json.loads((work / REPORT_FILE).read_text())
    tasks = _tasks_to_take(args, work)
    if tasks is None:
        return EXIT_USAGE
    decisions = choose_for_tasks(
        spec, tasks, list(read_curated(work)), _answerer(args), llm_validity=llm_validity(report)
    )
    write_choices(work, decisions)
    for d in decisions:
        scores = ", ".join(f"{n} agreement {s['agreement']} validity {s['validity']}" for n, s in d["scores"].items())
        then = f"served by {d['serve_by']}" if d["serve_by"] else f"{d['decision']} on {d['base_model']}"
        print(f"{d['name']}: {then} ({scores})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cluster.convert.finetune import TrainSettings, train_adapter, train_on_ray, write_model_card
    from cluster.model_store import resolve_source

    spec, work = load_spec(args.spec), work_folder(args)
    examples = list(read_curated(work))
    tasks = {t["name"]: t for t in accepted_tasks(work)}
    settings = TrainSettings.for_device("cuda" if args.gpus else "cpu")
    if args.steps:
        settings = replace(settings, steps=args.steps)
    for decision in read_choices(work):
        if decision["decision"] != "train":
            continue
        task, base = tasks[decision["name"]], spec.models[decision["base_model"]].source
        train, _ = split_task(examples, task["members"])
        out = work / ADAPTERS_FOLDER / decision["name"]
        if args.address:
            metrics = train_on_ray(args.address, base, train, out, gpus=args.gpus, settings=settings)
        else:
            metrics = train_adapter(Path(resolve_source(base)), train, out, settings)
        write_model_card(out, task, base, metrics)
        print(
            f"{decision['name']}: {metrics['steps']} steps, {metrics['examples']} examples, {metrics['seconds']} s, "
            f"loss {metrics['loss_first']} -> {metrics['loss_last']:.4f}; adapter in {out}"
        )
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from cluster.convert.finetune import METRICS_FILE, write_model_card
    from cluster.convert.gate import GATE_FILE, AdminClient, GateError, gate_adapter, publish_adapter

    work = work_folder(args)
    examples = list(read_curated(work))
    tasks = {t["name"]: t for t in accepted_tasks(work)}
    admin = AdminClient(args.url.rstrip("/"), _api_key(args))
    verdicts = []
    for decision in read_choices(work):
        folder = work / ADAPTERS_FOLDER / decision["name"]
        if decision["decision"] != "train" or not folder.is_dir():
            continue
        _, held_out = split_task(examples, tasks[decision["name"]]["members"])
        adapter = publish_adapter(folder, decision["name"], args.adapter_store)
        try:
            verdict = gate_adapter(admin, _answerer(args), decision, adapter, held_out)
        except GateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        verdicts.append(verdict)
        metrics = json.loads((folder / METRICS_FILE).read_text())
        metrics["evaluation"] = {k: verdict[k] for k in ("base", "adapter_score", "llm_validity", "kept")}
        write_model_card(folder, tasks[decision["name"]], decision["base_model"], metrics)
        fate = "kept as a specialist" if verdict["kept"] else "removed"
        print(f"{decision['name']}: adapter {verdict['adapter_score']} vs base {verdict['base']}: {fate}")
    (work / GATE_FILE).write_text(json.dumps({"adapters": verdicts}, indent=2) + "\n")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Each adapter the gate kept becomes a shadow promotion of its task on the fleet (live once it agrees)."""
    from collections import Counter

    from cluster.convert.embed import EMBEDDING_MODEL, Embedder, task_text
    from cluster.convert.gate import GATE_FILE, AdminClient, GateError
    from cluster.convert.promotion import promotion_for

    work = work_folder(args)
    kept = [v for v in json.loads((work / GATE_FILE).read_text())["adapters"] if v["kept"]]
    examples = {e["request_id"]: e for e in read_curated(work)}
    tasks = {t["name"]: t for t in accepted_tasks(work)}
    admin = AdminClient(args.url.rstrip("/"), _api_key(args))
    embedder = Embedder()
    for verdict in kept:
        members = set(tasks[verdict["name"]]["members"]) & examples.keys()
        own = [examples[r] for r in sorted(members)]
        others = [e for r, e in examples.items() if r not in members]
        model = Counter(e["model"] for e in own).most_common(1)[0][0]
        promotion = promotion_for(
            verdict["name"],
            verdict["name"],
            model,
            own=embedder.embed([task_text(e) for e in own]),
            others=embedder.embed([task_text(e) for e in others]),
            embedding_model=EMBEDDING_MODEL,
        ).model_copy(update={"phase": getattr(args, "phase", "shadow")})
        try:
            admin.promote(promotion.task, promotion.model_dump())
        except GateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        when = "now" if promotion.phase == "live" else "once shadow samples agree"
        print(f"{promotion.task}: {model}'s calls at similarity >= {promotion.min_similarity} go to "
              f"{promotion.specialist} {when}")  # fmt: skip
    return 0
