"""``slmfleet``: validate, plan, render, run locally, or diff and apply a fleet spec against a running fleet.

Each subcommand lives in its own small function; a bad spec prints its report (no traceback) and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cluster import render
from cluster.adapter_files import adapter_file_issues, local_adapter_notes
from cluster.convert.commands import add_convert_commands
from cluster.model_store import ModelSourceError, slmfleet_home
from cluster.placement import PlacementError, plan_from_store, render_plan
from cluster.render.common import RenderError
from cluster.spec import FleetSpec, load_spec
from cluster.spec_errors import SpecError

EXIT_USAGE = 2
DEFAULT_SPEC = "fleet.yaml"


def default_spec_path() -> str:
    """``fleet.yaml`` in the working directory, else the default fleet shipped at the repository root."""
    local = Path(DEFAULT_SPEC)
    if local.is_file():
        return str(local)
    return str(Path(__file__).resolve().parent.parent / DEFAULT_SPEC)


def load_checked_spec(path: str) -> FleetSpec:
    """The spec, with its local adapters' files checked against their models (here, where the files are
    reachable; the router never reads them); warnings for local paths a multi-node fleet relies on."""
    spec = load_spec(path)
    issues = adapter_file_issues(spec)
    if issues:
        raise SpecError(path, issues)
    for note in local_adapter_notes(spec):
        print(f"warning: {note}", file=sys.stderr)
    return spec


def local_state_path(spec_path: str) -> Path:
    """Where a local fleet of this spec file keeps its durable state (the adapter registry) between runs: one file
    per spec path under ``$SLMFLEET_HOME/state``, so restarting ``slmfleet up`` finds its registrations again."""
    digest = hashlib.sha256(str(Path(spec_path).resolve()).encode()).hexdigest()[:16]
    return slmfleet_home() / "state" / f"{digest}.json"


def _cmd_validate(args: argparse.Namespace) -> int:
    spec = load_checked_spec(args.spec)
    print(
        f"{args.spec}: ok ({len(spec.models)} models, {len(spec.specialists)} specialists, "
        f"{len(spec.pipelines)} pipelines, {len(spec.pools)} pools)"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    spec = load_checked_spec(args.spec)
    try:
        plan = plan_from_store(spec)
    except PlacementError as exc:
        print(f"{args.spec}: cannot place the fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    endpoints = _endpoint_rows(spec)
    if args.json:
        print(json.dumps(plan.to_dict() | ({"endpoints": endpoints} if endpoints else {}), indent=2))
        return 0
    print(render_plan(plan))
    for name, where in endpoints.items():
        print(f"{name}: served by its endpoint ({where}), no GPU here")
    return 0


def _endpoint_rows(spec: FleetSpec) -> dict[str, str]:
    """The models an outside API serves, with the API's host and model name (the plan places none of them)."""
    return {n: f"{urlsplit(e.url).netloc}, model {e.model}" for n, e in spec.endpoint_models().items()}


def _cmd_up(args: argparse.Namespace) -> int:
    # The one place cluster/ reaches into deployments/, lazily: Ray and Serve load only for `up`.
    from deployments.local_run import run_local

    spec = load_checked_spec(args.spec)
    return run_local(
        spec,
        host=args.host,
        port=args.port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        address=args.address,
        metrics_port=args.metrics_port,
        state_path=args.state or str(local_state_path(args.spec)),
    )


def _cmd_diff(args: argparse.Namespace) -> int:
    """What applying the spec to a running fleet would change: per app and deployment, live or restart, and why."""
    from deployments import fleet_deploy

    spec = load_checked_spec(args.spec)
    fleet_deploy.attach(args.address)
    diff, _ = fleet_deploy.spec_diff(spec, fleet_deploy.running_details())
    print(json.dumps(diff.as_dict(), indent=2, default=str) if args.json else diff.render_text())
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    """Print the diff, then deploy the spec's rendered config to the running fleet and wait until it runs."""
    from deployments import fleet_deploy

    spec = load_checked_spec(args.spec)
    fleet_deploy.attach(args.address)
    diff, desired = fleet_deploy.spec_diff(spec, fleet_deploy.running_details())
    print(diff.render_text())
    if diff.is_empty():
        return 0
    fleet_deploy.deploy_config(desired)
    print("applied: every application is running", file=sys.stderr)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    for path, text in render.render_files(args.kind, args.spec, args.output).items():
        if path is None:
            sys.stdout.write(text)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_spec_argument(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        parser.add_argument("spec", nargs="?", default=default_spec_path(), help="fleet spec YAML")
    else:
        parser.add_argument("--spec", default=default_spec_path(), help="fleet spec YAML (default: fleet.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmfleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a fleet spec and exit 2 with a report when it is wrong")
    _add_spec_argument(validate, positional=True)
    validate.set_defaults(func=_cmd_validate)

    plan = sub.add_parser("plan", help="print the placement plan: pool, node, GPU, share and memory per replica")
    _add_spec_argument(plan, positional=True)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_plan)

    up = sub.add_parser("up", help="deploy the fleet on a local Ray and serve HTTP until Ctrl-C")
    _add_spec_argument(up)
    up.add_argument("--host", default=None, help="override server.host")
    up.add_argument("--port", type=int, default=None, help="override server.port")
    up.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray (oversubscribed)")
    up.add_argument("--num-gpus", type=float, default=0, help="logical GPUs of the local Ray")
    up.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")
    up.add_argument("--metrics-port", type=int, default=None, help="Prometheus port of the local Ray's metrics")
    up.add_argument(
        "--state",
        default=None,
        help="file for the fleet's durable state (registered adapters); default: one per spec in $SLMFLEET_HOME/state",
    )
    up.set_defaults(func=_cmd_up)

    for name, func, what in (
        ("diff", _cmd_diff, "show what applying a spec to a running fleet changes (live or restart, and why)"),
        ("apply", _cmd_apply, "apply a spec to a running fleet: live where Serve allows, restarts only where needed"),
    ):
        command = sub.add_parser(name, help=what)
        _add_spec_argument(command, positional=True)
        command.add_argument("--address", required=True, help="the fleet's Ray address (`slmfleet up` prints it)")
        command.set_defaults(func=func, json=False)
    diff_parser = sub.choices["diff"]
    diff_parser.add_argument("--json", action="store_true", help="print the diff as JSON: changes, apps by effect")

    render_cmd = sub.add_parser(
        "render", help="render deploy artifacts: a Serve config, KubeRay manifests (k8s/), or ray-cluster.yaml"
    )
    render_cmd.add_argument("kind", choices=render.KINDS, help="serve: Serve config; k8s: a directory; ray-cluster")
    _add_spec_argument(render_cmd, positional=True)
    render_cmd.add_argument(
        "-o", "--output", default=None, help="file to write (k8s: directory, default k8s/); default stdout"
    )
    render_cmd.set_defaults(func=_cmd_render)

    add_convert_commands(sub, _add_spec_argument)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SpecError, ModelSourceError, PlacementError, RenderError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `slmfleet plan ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
