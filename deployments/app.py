"""The app builders: the fleet as Serve applications, one per model plus the router.

The rendered Serve config (``slmfleet render serve``) names :func:`model_app` and :func:`router_app` as import
paths, and Serve applies the config's deployment options over what these return. ``slmfleet up`` and
``slmfleet apply`` deploy that very config (:mod:`deployments.fleet_deploy`), so a local run and a cluster run the
same apps with the same options.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from cluster.render.common import ROUTER_DEPLOYMENT, model_deployment_name
from cluster.spec import ModelSpec
from deployments.model.server import ModelServer
from deployments.router.ingress import Router

__all__ = ["model_app", "router_app"]


def model_app(args: dict[str, Any]) -> Application:
    """A model's app: ``args`` = ``{model: name, spec: <its engine settings>, engine: <plan overrides>}``."""
    name = args["model"]
    model = ModelSpec.model_validate(args["spec"])
    deployment = serve.deployment(ModelServer).options(name=model_deployment_name(name))
    return deployment.bind(name, model, args.get("engine") or {})


def router_app(args: dict[str, Any]) -> Application:
    """The router's app. It takes no args: the spec is its deployment's ``user_config`` in the config."""
    if args:
        raise ValueError(f"the router app takes no args (the spec is its user_config); got {sorted(args)}")
    return serve.deployment(Router).options(name=ROUTER_DEPLOYMENT).bind()
