"""The app builders: the fleet as Serve applications, one per model plus the router.

The rendered Serve config (``slmfleet render serve``) names :func:`model_app` and :func:`router_app` as import
paths; ``slmfleet up`` deploys :func:`fleet_applications`, built from the very same config data, so a local run
and a cluster run the same apps with the same options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application, RunTarget

from cluster.placement import Plan, plan_from_store
from cluster.render.common import MODEL_IMPORT_PATH, ROUTER_IMPORT_PATH, model_deployment_name
from cluster.render.serve_config import build_serve_config, router_deployment
from cluster.spec import FleetSpec, ModelSpec, parse_spec
from deployments.model.server import ModelServer
from deployments.router.ingress import Router

__all__ = ["fleet_applications", "model_app", "router_app"]


def model_app(args: dict[str, Any]) -> Application:
    """Import path of a model's app: ``args`` = ``{model: name, spec: <model settings>, engine: <plan overrides>}``."""
    return model_application(args)


def router_app(args: dict[str, Any]) -> Application:
    """Import path of the router's app: ``args`` = ``{spec: <the fleet spec>, replica_per_hour: {model: $/h}}``."""
    return router_application(args)


def model_application(args: dict[str, Any], options: dict[str, Any] | None = None) -> Application:
    name = args["model"]
    model = ModelSpec.model_validate(args["spec"])
    deployment = serve.deployment(ModelServer).options(**(options or {"name": model_deployment_name(name)}))
    return deployment.bind(name, model, args.get("engine") or {})


def router_application(args: dict[str, Any], options: dict[str, Any] | None = None) -> Application:
    spec = parse_spec(args["spec"], "<serve config: applications[].args.spec>")
    hourly = {name: float(price) for name, price in (args.get("replica_per_hour") or {}).items()}
    return serve.deployment(Router).options(**(options or router_deployment(spec))).bind(spec, hourly)


_BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Application]] = {
    MODEL_IMPORT_PATH: model_application,
    ROUTER_IMPORT_PATH: router_application,
}


def fleet_applications(spec: FleetSpec, plan: Plan | None = None) -> list[RunTarget]:
    """Every app of the fleet (for ``serve.run_many``) with the options the rendered Serve config gives it."""
    config = build_serve_config(spec, plan or plan_from_store(spec))
    targets = []
    for app in config["applications"]:
        (options,) = app["deployments"]
        application = _BUILDERS[app["import_path"]](app["args"], options)
        targets.append(RunTarget(application, name=app["name"], route_prefix=app["route_prefix"]))
    return targets
