"""Deploy the fleet's rendered Serve config to a running Serve, declaratively, as ``serve deploy FILE`` does.

Declarative deploys are what make spec edits cheap: Serve compares the new config with the running one and
applies a changed ``user_config`` (the router's spec), replica bounds or autoscaling to the running replicas,
restarting only the apps whose code or args changed. (Deploying with ``serve.run`` instead gives every
deployment a fresh random code version, so every redeploy restarts every engine.) ``slmfleet up`` and
``slmfleet apply`` both come through here, with the same config ``slmfleet render serve`` writes.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from cluster.placement import Plan, plan_from_store
from cluster.render.serve_config import build_serve_config
from cluster.spec import FleetSpec, is_loopback
from deployments.local_run import LOOPBACK_ONLY_ENV

READY_TIMEOUT_S = 600.0
POLL_S = 1.0


class DeployFailedError(RuntimeError):
    """An application of the fleet failed to deploy; the message carries Serve's own reason."""


def fleet_config(spec: FleetSpec, host: str, port: int, plan: Plan | None = None) -> dict[str, Any]:
    """The rendered Serve config of ``spec``, listening on ``host:port`` (which decide the router's default
    replica count as they would in the spec)."""
    server = spec.server.model_copy(update={"host": host, "port": port})
    return build_serve_config(spec.model_copy(update={"server": server}), plan or plan_from_store(spec))


def deploy_config(config: dict[str, Any], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Hand ``config`` to Serve's controller (Serve must be running) and wait until every app of it runs."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    wait_until_running([app["name"] for app in config["applications"]], timeout_s)


def wait_until_running(apps: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until each named app is RUNNING; raise :class:`DeployFailedError` on a failed one or at the timeout."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        states = serve.status().applications
        failed = {name: _why(states[name]) for name in apps if name in states and _failed(states[name].status)}
        if failed:
            raise DeployFailedError("; ".join(f"{name}: {message}" for name, message in failed.items()))
        if all(name in states and str(states[name].status).endswith("RUNNING") for name in apps):
            return
        if time.monotonic() > deadline:
            pending = {name: str(states[name].status) if name in states else "absent" for name in apps}
            raise DeployFailedError(f"not running after {timeout_s:.0f} s: {pending}")
        time.sleep(POLL_S)


def _why(app: Any) -> str:
    """The app's message and each failing deployment's own (where Serve puts the replica's exception)."""
    parts = [app.message] + [
        f"{name}: {deployment.message}" for name, deployment in app.deployments.items() if deployment.message
    ]
    return " | ".join(part for part in parts if part)


def _failed(status: object) -> bool:
    return str(status).endswith(("DEPLOY_FAILED", "UNHEALTHY"))


def driver_environ(address: str, environ: MutableMapping[str, str]) -> None:
    """What a driver of the fleet's Ray at ``address`` needs in its environment, where not already set: Ray's token
    auth (a local ``slmfleet up`` cluster uses it), and for a loopback address the local fleet's loopback-only mode
    (:data:`deployments.local_run.LOOPBACK_ONLY_ENV`): outside it, Ray turns 127.0.0.1 into the machine's own
    address and never reaches a GCS that listens on loopback."""
    environ.setdefault("RAY_AUTH_MODE", "token")
    if is_loopback(address.rpartition(":")[0].strip("[]")):
        for name, value in LOOPBACK_ONLY_ENV.items():
            environ.setdefault(name, value)


def attach(address: str) -> None:
    """Join a running fleet's Ray as a driver, its environment set first (:func:`driver_environ`): Ray reads its
    ``RAY_*`` settings once, at import."""
    import os

    driver_environ(address, os.environ)
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)


def running_details() -> dict[str, Any]:
    """What Serve runs now: its applications with their deployed configs, and its HTTP options."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def desired_config(spec: FleetSpec, details: dict[str, Any]) -> dict[str, Any]:
    """The spec's rendered config on the running Serve's HTTP address (a running proxy does not move)."""
    http = details.get("http_options") or {}
    return fleet_config(spec, http.get("host", spec.server.host), int(http.get("port", spec.server.port)))


def spec_diff(spec: FleetSpec, details: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the :class:`cluster.fleet_diff.FleetDiff` from what runs to ``spec``, the config that applies it)."""
    from cluster.fleet_diff import diff_serve_configs
    from deployments.fleet_state import read_runtime_state, runtime_entries

    desired = desired_config(spec, details)
    runtime = runtime_entries(read_runtime_state())  # registrations the spec does not hold: apply keeps them
    return diff_serve_configs(details, desired, runtime), desired
