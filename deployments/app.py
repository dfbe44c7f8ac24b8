"""The app builder: one Serve application from one fleet spec.

``serve run deployments.app:app fleet=fleet.yaml`` calls :func:`app` with the command line's ``key=value``
arguments; ``slmfleet up`` and the rendered Serve config use :func:`build_app` the same way.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from cluster.spec import FleetSpec, load_spec
from deployments.model_server import ModelServer
from deployments.router import Router

APP_NAME = "slmfleet"
ROUTER_DEPLOYMENT = "router"
HEALTH_CHECK_PERIOD_S = 5
HEALTH_CHECK_TIMEOUT_S = 30


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def model_deployment_options(spec: FleetSpec, name: str) -> dict[str, Any]:
    """Serve options for one model deployment: bounded queues, autoscaling bounds, health checks."""
    model = spec.models[name]
    scaling = model.autoscaling
    options: dict[str, Any] = {
        "name": model_deployment_name(name),
        "max_ongoing_requests": model.concurrent_seqs,
        "max_queued_requests": model.max_queued_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
    }
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }
    return options


def router_deployment_options(spec: FleetSpec) -> dict[str, Any]:
    return {
        "name": ROUTER_DEPLOYMENT,
        "max_ongoing_requests": spec.server.max_ongoing_requests,
        "max_queued_requests": spec.server.max_queued_requests,
        "ray_actor_options": {"num_cpus": 0.5},
    }


def build_app(spec: FleetSpec) -> Application:
    """Router ingress bound to one model deployment per spec model."""
    handles = {
        name: serve.deployment(ModelServer).options(**model_deployment_options(spec, name)).bind(name, spec)
        for name in spec.models
    }
    router = serve.deployment(Router).options(**router_deployment_options(spec))
    return router.bind(spec, **handles)


def app(args: dict[str, str]) -> Application:
    """Entry point for ``serve run deployments.app:app fleet=PATH``."""
    from cluster.cli import default_spec_path

    return build_app(load_spec(args.get("fleet") or default_spec_path()))
