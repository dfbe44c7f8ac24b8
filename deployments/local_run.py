"""``slmfleet up``: a local Ray sized for a small machine, the fleet deployed on it, HTTP until Ctrl-C.

Ray and Serve are imported here, inside the function that needs them, so the rest of ``cluster`` stays light.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import MutableMapping

from cluster.model_store import resolve_source
from cluster.render.common import SERVE_ENV, STATE_PATH_ENV
from cluster.spec import FleetSpec
from cluster.spec_errors import SpecError, SpecIssue
from deployments.pipeline.tools import ToolLoadError, import_callable
from deployments.router.auth_gate import exposure_issues

LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""A local fleet's Ray on loopback. Ray 2.60 binds its servers (GCS, raylet, object manager, every worker's gRPC
port, the dashboard agent, the metrics and runtime-env agents) to the node's IP, and on Linux the node IP is the
machine's own address, so about 20 ports listen beyond the machine. This switch is Ray's single-node mode, the
default on macOS and Windows: the node IP becomes 127.0.0.1 and those servers bind loopback. No other node can
join; a user who wants one sets the variable to 1. Serve's replica gRPC servers stay on ``[::]`` (Serve hard-codes
that address in ``serve/_private/replica.py``); they accept only Ray's token-authenticated calls."""


def apply_serve_env(environ: MutableMapping[str, str]) -> None:
    """Serve's settings for a fleet (:data:`SERVE_ENV`), where the caller's environment does not set them."""
    for name, value in SERVE_ENV.items():
        environ.setdefault(name, value)


def apply_local_ray_env(environ: MutableMapping[str, str]) -> None:
    """A local fleet's environment, before Ray is imported (Ray reads its ``RAY_*`` settings once, at import):
    Serve's settings and loopback-only Ray, where the caller's environment does not set them."""
    apply_serve_env(environ)
    for name, value in LOOPBACK_ONLY_ENV.items():
        environ.setdefault(name, value)


def run_local(
    spec: FleetSpec,
    *,
    host: str | None,
    port: int | None,
    num_cpus: int,
    num_gpus: float,
    address: str | None,
    metrics_port: int | None = None,
    state_path: str | None = None,
) -> int:
    """Deploy ``spec`` on a local Ray (or the one at ``address``) and serve until interrupted. ``state_path``: where
    the fleet's shared state snapshots its durable part (the adapter registry), unless the environment says."""
    if not address:
        apply_local_ray_env(os.environ)  # every process of the local cluster inherits it
        if state_path:
            os.environ.setdefault(STATE_PATH_ENV, state_path)
    import ray
    from ray import serve

    host = host or spec.server.host
    port = port or spec.server.port
    issues = exposure_issues(spec, host, os.environ)
    if issues:
        raise SpecError("(server settings)", issues)
    _check_tools_import(spec)
    for model in spec.engine_models().values():  # convert bundled weights once here, not in racing replicas
        resolve_source(model.source)

    if address:
        ray.init(address=address)  # a running cluster keeps the environment it was started with
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _metrics_export_port=metrics_port,
        )
    # after ray.init, which installs a SIGTERM handler of its own; background shells start us with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupt)
    try:
        _deploy(spec, host, port)
        _print_ready(spec, host, port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nslm-fleet: shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _deploy(spec: FleetSpec, host: str, port: int) -> None:
    from ray import serve

    from deployments.fleet_deploy import deploy_config, fleet_config

    try:
        serve.start(http_options={"host": host, "port": port})
        deploy_config(fleet_config(spec, host, port))  # declarative, like `serve deploy`: later edits apply live
    except Exception as exc:  # Serve reports a taken port as a RuntimeError from its proxy actor
        if "Failed to bind" not in str(exc):
            raise
        issue = SpecIssue("server.port", port, f"cannot listen on {host}:{port}: the port is in use", "use --port")
        raise SpecError("(server settings)", [issue]) from None


def _check_tools_import(spec: FleetSpec) -> None:
    """A tool whose import path is wrong fails here, with exit 2, not later in a crash-looping router."""
    for name, tool in spec.tools.items():
        if tool.python:
            try:
                import_callable(tool.python)
            except ToolLoadError as exc:
                fix = "point it at an importable module:function"
                raise SpecError("(tools)", [SpecIssue(f"tools.{name}.python", tool.python, str(exc), fix)]) from None


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _how_to_attach() -> str:
    """How a driver joins this fleet's Ray: on loopback-only Ray, only a driver in the same mode can."""
    loopback = " ".join(f"{name}={value}" for name, value in LOOPBACK_ONLY_ENV.items())
    if all(os.environ.get(name) == value for name, value in LOOPBACK_ONLY_ENV.items()):
        return f"a driver attaches with ray.init(address=...) under RAY_AUTH_MODE=token {loopback}"
    return "a driver attaches with ray.init(address=...) under RAY_AUTH_MODE=token"


def _print_ready(spec: FleetSpec, host: str, port: int) -> None:
    import ray

    url = f"http://{host}:{port}"
    name = next(iter(spec.specialists), next(iter(spec.models)))
    env = spec.server.api_keys_env
    auth = f' -H "Authorization: Bearer ${{{env}%%,*}}"' if env else ""  # the first of the comma-separated keys
    print(
        f"\nslm-fleet is serving at {url}  (models: {', '.join(spec.served_names())})\n"
        f"Try:\n  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f'    -d \'{{"model": "{name}", "messages": [{{"role": "user", '
        f'"content": "Where is my order? It was due on Monday."}}]}}\'\n'
        f"Ray cluster: {ray.get_runtime_context().gcs_address}  ({_how_to_attach()})\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
