"""Spec + plan -> a Ray Serve config file (``serve run FILE``, ``serve deploy FILE``, RayService serveConfigV2).

The fleet is one Serve application per model plus the router application:

- a model's app (``deployments.app:model_app``) is not on HTTP; its ``args`` hold only that model's settings and
  the plan's engine arguments, so editing a pipeline or a specialist leaves its engines running, and a model can
  be added, updated or deleted (``serve.delete("model-<name>")``) without touching the others;
- the router's app (``deployments.app:router_app``, route ``/``) gets the whole spec inline as its deployment's
  ``user_config``, so a cluster needs no spec file, and editing a specialist, pipeline, price or policy reaches the
  running router replicas through ``reconfigure()``, with no restart; it finds the models by app name;
- a model app's ``args`` hold only what its engine needs (:data:`ENGINE_FIELDS`); its bounds and autoscaling live
  in deployment options, its latency objective in its deployment's ``user_config``, its price and policy in the
  router's config, so editing them restarts no engine.

Each app's ``deployments`` entry holds the plan's options (GPU share, pool resource, placement group,
autoscaling, queue bounds): Serve applies config options over the code's, so what runs is what this file says,
and a reader sees the plan without Ray. ``slmfleet up`` deploys the same data (:mod:`deployments.app`).
"""

from __future__ import annotations

from typing import Any

from cluster.cost import replica_hourly_prices
from cluster.deploy_options import deployment_options, engine_overrides, router_autoscaling_config
from cluster.placement import Plan
from cluster.render.common import (
    APP_NAME,
    HEALTH_CHECK_PERIOD_S,
    HEALTH_CHECK_TIMEOUT_S,
    MODEL_IMPORT_PATH,
    ROUTER_DEPLOYMENT,
    ROUTER_IMPORT_PATH,
    ROUTER_NUM_CPUS,
    dump_yaml,
    header,
    model_deployment_name,
)
from cluster.spec import FleetSpec

# Order of a deployment's keys in the file: name first, then what a reader looks for.
_DEPLOYMENT_KEYS = (
    "name",
    "ray_actor_options",
    "placement_group_bundles",
    "placement_group_strategy",
    "autoscaling_config",
    "max_ongoing_requests",
    "max_queued_requests",
    "request_router_config",
    "user_config",
    "health_check_period_s",
    "health_check_timeout_s",
    "graceful_shutdown_timeout_s",
)


# The model fields its engine is built from: the only ones in a model app's args (Serve restarts an app's replicas
# when its args change, so a price, a queue bound, autoscaling or a policy must not be there).
# The LoRA capacity sizes the engine; its probe threshold is the router's alone.
ENGINE_FIELDS: dict[str, Any] = {
    **dict.fromkeys(("source", "max_model_len", "concurrent_seqs", "dtype", "tensor_parallel", "engine"), True),
    "lora": {"max_loras": True, "max_lora_rank": True, "max_cpu_loras": True},
}


def spec_mapping(spec: FleetSpec) -> dict[str, Any]:
    """The spec as plain data, only the keys the author set: ``parse_spec`` of it gives back the same spec."""
    return spec.model_dump(mode="json", exclude_unset=True)


def model_deployment(plan: Plan, spec: FleetSpec, model: str) -> dict[str, Any]:
    """One model's deployment entry: the plan's options plus the name and health-check cadence."""
    options = {
        **deployment_options(plan, spec, model),
        "name": model_deployment_name(model),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        # a replica stopped by a scale-down or a rolling change finishes what it holds first: up to one model call
        "graceful_shutdown_timeout_s": spec.server.request_timeout_s,
    }
    return {key: options[key] for key in _DEPLOYMENT_KEYS if key in options}


def router_deployment(spec: FleetSpec, replica_per_hour: dict[str, float] | None = None) -> dict[str, Any]:
    """The HTTP ingress: bounded by the spec's server limits, half a CPU, no GPU, no pool (it may land anywhere);
    one replica on loopback, two or more autoscaled on ongoing requests when exposed (:mod:`cluster.deploy_options`).

    Its ``user_config`` is the spec and what one replica of each GPU-placed model costs per hour (prices the spec
    does not declare are derived from it and measured throughput): a change reaches running replicas live.
    """
    return {
        "name": ROUTER_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": ROUTER_NUM_CPUS},
        "autoscaling_config": router_autoscaling_config(spec.server),
        "max_ongoing_requests": spec.server.max_ongoing_requests,
        "max_queued_requests": spec.server.max_queued_requests,
        "user_config": {"spec": spec_mapping(spec), "replica_per_hour": replica_per_hour or {}},
        "graceful_shutdown_timeout_s": spec.server.stream_timeout_s,  # open streams drain before a replica stops
    }


def model_application(plan: Plan, spec: FleetSpec, model: str) -> dict[str, Any]:
    """A model's own app: reachable only through the router's handles, never on HTTP."""
    return {
        "name": model_deployment_name(model),
        "route_prefix": None,
        "import_path": MODEL_IMPORT_PATH,
        "args": {
            "model": model,
            "spec": spec.models[model].model_dump(mode="json", exclude_unset=True, include=ENGINE_FIELDS),
            "engine": engine_overrides(plan, model),
        },
        "deployments": [model_deployment(plan, spec, model)],
    }


def router_application(plan: Plan, spec: FleetSpec) -> dict[str, Any]:
    """The router's app on route ``/``: no args (code and args unchanged, so Serve never restarts it for a spec
    edit); the spec is its deployment's ``user_config``."""
    return {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {},
        "deployments": [router_deployment(spec, replica_hourly_prices(spec, plan))],
    }


def build_serve_config(spec: FleetSpec, plan: Plan) -> dict[str, Any]:
    """The Serve config as data (validated against ``ray.serve.schema.ServeDeploySchema`` in the tests)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": spec.server.host, "port": spec.server.port},
        "applications": [
            *(model_application(plan, spec, name) for name in spec.engine_models()),  # endpoints: no app
            router_application(plan, spec),
        ],
    }


def serve_config_text(spec: FleetSpec, plan: Plan, source: str, command: str) -> str:
    """The Serve config file with its generated-file header."""
    return header(command, source) + dump_yaml(build_serve_config(spec, plan))
