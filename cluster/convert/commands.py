"""``slmfleet convert <stage>``: the conversion loop's command line (so far S1, the key pair and the log's summary, and
S2, curation).

``inspect`` without a key says what anyone may know of the log (streams, segments, sizes, which key seals them);
with the private key it adds counts and cost per model, specialist, pipeline and escalation reason, never a
record's content: content leaves the log only through curation, after PII is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.convert.usage_scope import log_destination
from cluster.spec import load_spec

EXIT_USAGE = 2


def add_convert_commands(sub: Any, add_spec_argument: Callable[[argparse.ArgumentParser], None]) -> None:
    """``convert keygen``, ``convert inspect`` and one command per stage under the main parser's subcommands."""
    convert = sub.add_parser("convert", help="the conversion loop: from logged LLM-tier calls to LoRA specialists")
    stages = convert.add_subparsers(dest="stage", required=True)

    keygen = stages.add_parser("keygen", help="make the usage log's key pair (the spec gets the public key)")
    keygen.add_argument("--out", required=True, type=Path, help="folder for usage-log.key (private) and .pub")
    keygen.set_defaults(func=_cmd_keygen)

    inspect = stages.add_parser("inspect", help="summarize the spec's usage log (counts only, never content)")
    add_spec_argument(inspect)
    inspect.add_argument("--key", type=Path, default=None, help="the private key: adds record counts and cost")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_cmd_inspect)

    helps = {
        "curate": "S2: the log's examples with PII removed, failures and repeats dropped (--address: on Ray Data)",
        "discover": "S3: cluster the curated examples into tasks; writes tasks.yaml for review",
        "choose": "S4: score the fleet's SLMs on each accepted task; serve as is, or train",
        "train": "S5: a LoRA adapter per task to train (locally, or as a Ray task with --address)",
        "gate": "S6: register each adapter on the fleet, keep it only if it beats its base on held-out",
        "promote": "S6: each kept adapter takes its task's LLM-tier calls (shadow first, live once it agrees)",
        "run": "every stage in order (without --url: curate and discover only)",
        "drift": "whether the calls logged since the last round hold a new task (--run: start a new round then)",
    }
    for name, what in helps.items():
        command = stages.add_parser(name, help=what)
        add_spec_argument(command)
        command.add_argument(
            "--work", type=Path, default=None, help="the loop's folder (default $SLMFLEET_HOME/convert)"
        )
        _stage_options(name, command)
        command.set_defaults(func=STAGES[name])


def _stage_options(name: str, command: argparse.ArgumentParser) -> None:
    if name == "drift":
        command.add_argument("--run", action="store_true", help="on drift, run every stage as 'convert run' does")
        command.add_argument("--json", action="store_true", help="print the report as JSON")
        name = "run"  # and every option of 'run', which it may go on to
    if name in ("curate", "run"):
        command.add_argument("--key", type=Path, required=True, help="the usage log's private key")
    if name in ("choose", "gate", "promote", "run"):
        command.add_argument(
            "--url", required=name != "run", help="the fleet's HTTP address (e.g. http://127.0.0.1:8000)"
        )
        command.add_argument("--api-key-env", default=None, help="environment variable with an admin-scoped API key")
    if name in ("curate", "discover", "train", "run"):
        command.add_argument(
            "--address",
            default=None,
            help="work on this Ray cluster: curation and embeddings through Ray Data, training as a Ray task "
            "(default: in this process)",
        )
    if name in ("train", "run"):
        command.add_argument("--gpus", type=float, default=0, help="GPUs for the Ray training task")
        command.add_argument("--steps", type=int, default=None, help="training steps (default: by device)")
    if name in ("gate", "run"):
        command.add_argument("--adapter-store", default=None, help="s3:// or gs:// prefix the replicas fetch from")
    if name in ("choose", "run"):
        command.add_argument(
            "--task",
            action="append",
            default=None,
            metavar="NAME",
            help="take only this accepted task through choose, train, gate and promote (repeatable; default: all)",
        )
    if name == "promote":
        command.add_argument(
            "--phase", choices=["shadow", "live"], default="shadow", help="live: skip the shadow phase (trust the gate)"
        )


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cluster.convert.sealed_log import SealedLogError, generate_key_pair

    try:
        private_path, public = generate_key_pair(args.out)
    except SealedLogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {private_path} (keep it off the serving nodes: whoever holds it reads the log)")
    print("add to the fleet spec:\n")
    print(f"usage_log:\n  public_key: {public}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from cluster.convert.log_files import summarize_log
    from cluster.convert.sealed_log import SealedLogError

    destination = _log_destination(args)
    if destination is None:
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="slmfleet-usage-") as scratch:
        try:
            summary = summarize_log(destination, Path(scratch), args.key)
        except SealedLogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        _print_summary(summary)
    return 0


def _log_destination(args: argparse.Namespace) -> str | None:
    """Where the spec's usage log is (None, reported, when the spec has none)."""
    spec = load_spec(args.spec)
    if spec.usage_log is None:
        print(f"error: {args.spec} has no usage_log section", file=sys.stderr)
        return None
    return log_destination(spec.usage_log)


def work_folder(args: argparse.Namespace) -> Path:
    from cluster.model_store import slmfleet_home

    return args.work or slmfleet_home() / "convert"


def _on_ray(args: argparse.Namespace) -> bool:
    """Joins the Ray cluster at ``--address`` when one is given: the batch work then runs there."""
    if not getattr(args, "address", None):
        return False
    import ray

    ray.init(address=args.address, ignore_reinit_error=True, logging_level="ERROR")
    return True


def _curated_from_log(
    args: argparse.Namespace, skip: Callable[[str], bool] = lambda _: False
) -> tuple[list[dict[str, Any]], Any] | None:
    """The spec's usage log read with ``--key`` and curated (on Ray with ``--address``), leaving out the records
    whose request id ``skip`` names; None, reported, when the log cannot be read."""
    from cluster.convert.batch import curate_on_ray
    from cluster.convert.curate import curate
    from cluster.convert.log_files import read_records
    from cluster.convert.pii import PiiScrubber
    from cluster.convert.sealed_log import SealedLogError, load_private_key

    destination = _log_destination(args)
    if destination is None:
        return None
    with tempfile.TemporaryDirectory(prefix="slmfleet-usage-") as scratch:
        try:
            read = read_records(destination, Path(scratch), load_private_key(args.key))
            records = [record for record in read if not skip(record["request_id"])]
            return curate_on_ray(records) if _on_ray(args) else curate(records, PiiScrubber())
        except SealedLogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None


def _cmd_curate(args: argparse.Namespace) -> int:
    from cluster.convert.curate import write_curated

    curated = _curated_from_log(args)
    if curated is None:
        return EXIT_USAGE
    examples, report = curated
    write_curated(work_folder(args), examples, report)
    summary = report.as_dict()
    print(f"curated {summary['kept']} of {summary['read']} records into {work_folder(args)}")
    print(f"  dropped: {summary['dropped'] or 'none'}; PII removed: {summary['pii_removed'] or 'none'}")
    return 0


def _last_review(work: Path) -> list[dict[str, Any]]:
    """The tasks of the review a new round replaces (none when there is none, or it no longer reads)."""
    from cluster.convert.discover import REVIEW_FILE, reviewed_tasks
    from cluster.spec_errors import SpecError

    try:
        return reviewed_tasks(work) if (work / REVIEW_FILE).is_file() else []
    except (SpecError, OSError, ValueError, KeyError) as exc:
        print(f"note: the last review in {work} is not carried over ({exc})", file=sys.stderr)
        return []


def _cmd_discover(args: argparse.Namespace) -> int:
    from cluster.convert.batch import embed_on_ray
    from cluster.convert.curate import CURATED_FILE, read_curated
    from cluster.convert.discover import REVIEW_FILE, DiscoverySettings, discover, write_discovery
    from cluster.convert.embed import EMBEDDING_MODEL, Embedder, task_text

    work = work_folder(args)
    if not (work / CURATED_FILE).is_file():
        print(f"error: no {CURATED_FILE} in {work}; run 'slmfleet convert curate' first", file=sys.stderr)
        return EXIT_USAGE
    examples = list(read_curated(work))
    texts = [task_text(example) for example in examples]
    settings = DiscoverySettings()
    vectors = embed_on_ray(texts) if _on_ray(args) else Embedder().embed(texts)
    found = discover(texts, [e["request_id"] for e in examples], vectors, settings)
    write_discovery(work, found, settings, EMBEDDING_MODEL, _last_review(work))
    print(f"{len(found['tasks'])} tasks in {len(examples)} examples ({len(found['unclustered'])} unclustered):")
    for task in found["tasks"]:
        print(f"  {task['id']}: {task['name']} ({task['size']} examples), e.g. {task['typical'][0][:80]!r}")
    print(f"review them in {work / REVIEW_FILE} (accept, rename or reject), then run the next stage")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """The stages in order, each on the previous one's files; the first that fails stops the run."""
    from cluster.convert import fleet_stages

    stages = [_cmd_curate, _cmd_discover]
    if args.url:
        stages += [fleet_stages.cmd_choose, fleet_stages.cmd_train, fleet_stages.cmd_gate, fleet_stages.cmd_promote]
    for stage in stages:
        status = stage(args)
        if status != 0:
            return status
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    """The calls logged since the last round, matched to its reviewed tasks (see :mod:`cluster.convert.drift`);
    with --run, a new round when they hold a new task."""
    import numpy as np

    from cluster.convert.batch import embed_on_ray
    from cluster.convert.curate import CURATED_FILE, read_curated
    from cluster.convert.discover import DiscoverySettings, reviewed_tasks
    from cluster.convert.drift import KnownTask, drift_report
    from cluster.convert.embed import Embedder, task_text

    work = work_folder(args)
    if not (work / CURATED_FILE).is_file():
        print(f"error: no round in {work}; run 'slmfleet convert run' first", file=sys.stderr)
        return EXIT_USAGE
    unknown_radius = 1.0 - DiscoverySettings().max_distance  # a round from before radii were kept
    known = {  # a rejected task is known too: its calls stay on the LLM by the user's choice, they are not drift
        task["name"] + ("" if task["decision"] == "accept" else " (rejected)"): KnownTask(
            np.asarray(task["centroid"]), task.get("radius", unknown_radius)
        )
        for task in reviewed_tasks(work)
    }
    seen = {example["request_id"] for example in read_curated(work)}
    curated = _curated_from_log(args, skip=seen.__contains__)
    if curated is None:
        return EXIT_USAGE
    texts = [task_text(example) for example in curated[0]]
    report = drift_report(known, embed_on_ray(texts) if _on_ray(args) else Embedder().embed(texts))
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"{report.new_calls} curated calls since the last round in {work}")
        print("  of known tasks: " + (", ".join(f"{n} {c}" for n, c in report.by_task.most_common()) or "none"))
        print(f"  of no known task: {report.unmatched}; new tasks among them: {report.new_tasks or 'none'}")
        print("drift: a new round is due" if report.drift else "no drift")
    if report.drift and args.run:
        return _cmd_run(args)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"usage log at {summary['destination']}")
    print(
        f"  {summary['streams']} streams, {summary['segments']} segments, {summary['frames']} frames, "
        f"{summary['bytes']} bytes, sealed to {', '.join(summary['sealed_to']) or '-'}"
    )
    if summary["truncated_tails"]:
        print(f"  {summary['truncated_tails']} segments end in a partial frame (a writer stopped mid-write)")
    if "records" not in summary:
        print("  (give --key for record counts)")
        return
    print(f"  {summary['records']} records, cost {summary['cost']}")
    for kind, counter in summary["by"].items():
        print(f"  by {kind}: " + ", ".join(f"{name} {n}" for name, n in sorted(counter.items())))


def _fleet_stage(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from cluster.convert import fleet_stages

        return int(getattr(fleet_stages, f"cmd_{name}")(args))

    return run


STAGES: dict[str, Callable[[argparse.Namespace], int]] = {
    "curate": _cmd_curate,
    "discover": _cmd_discover,
    "choose": _fleet_stage("choose"),
    "train": _fleet_stage("train"),
    "gate": _fleet_stage("gate"),
    "promote": _fleet_stage("promote"),
    "run": _cmd_run,
    "drift": _cmd_drift,
}
