"""The app builder: one Serve application from one fleet spec.

``serve run deployments.app:app fleet=fleet.yaml`` calls :func:`app` with the command line's ``key=value``
arguments; ``slmfleet up`` and the rendered Serve config use :func:`build_app` the same way.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from cluster.deploy_options import deployment_options, engine_overrides
from cluster.placement import Plan, plan_from_store
from cluster.render.common import (
    APP_NAME,
    HEALTH_CHECK_PERIOD_S,
    HEALTH_CHECK_TIMEOUT_S,
    ROUTER_DEPLOYMENT,
    ROUTER_NUM_CPUS,
    model_deployment_name,
)
from cluster.spec import FleetSpec, load_spec, parse_spec
from deployments.model_server import ModelServer
from deployments.router import Router

__all__ = ["APP_NAME", "app", "build_app", "model_deployment_name", "model_deployment_options"]


def model_deployment_options(plan: Plan, spec: FleetSpec, name: str) -> dict[str, Any]:
    """The plan's placement options for one model, plus its name and health-check cadence."""
    return {
        **deployment_options(plan, spec, name),
        "name": model_deployment_name(name),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
    }


def router_deployment_options(spec: FleetSpec) -> dict[str, Any]:
    return {
        "name": ROUTER_DEPLOYMENT,
        "max_ongoing_requests": spec.server.max_ongoing_requests,
        "max_queued_requests": spec.server.max_queued_requests,
        "ray_actor_options": {"num_cpus": ROUTER_NUM_CPUS},
    }


def build_app(spec: FleetSpec, plan: Plan | None = None) -> Application:
    """Router ingress bound to one model deployment per spec model, each placed as the plan says."""
    plan = plan or plan_from_store(spec)
    handles = {
        name: serve.deployment(ModelServer)
        .options(**model_deployment_options(plan, spec, name))
        .bind(name, spec, engine_overrides(plan, name))
        for name in spec.models
    }
    router = serve.deployment(Router).options(**router_deployment_options(spec))
    return router.bind(spec, **handles)


def app(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run deployments.app:app fleet=PATH`` and for rendered Serve configs.

    A rendered config (``slmfleet render serve``) carries the spec inline as ``args: {spec: {...}}``, so the
    cluster needs no spec file; it is validated exactly like a file.
    """
    return build_app(spec_from_args(args))


def spec_from_args(args: dict[str, Any]) -> FleetSpec:
    """``spec`` (an inline mapping) or ``fleet`` (a path, default fleet.yaml); giving both is a mistake."""
    if "spec" in args:
        if "fleet" in args:
            raise ValueError("give the app either 'spec' (inline) or 'fleet' (a path), not both")
        return parse_spec(args["spec"], "<serve config: applications[].args.spec>")
    from cluster.cli import default_spec_path

    return load_spec(args.get("fleet") or default_spec_path())
