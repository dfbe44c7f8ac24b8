"""Plan -> Ray Serve deployment options, so ``serve run`` deploys exactly what the plan says. No Ray import.

Pool pinning uses Ray custom resources: every node of pool ``<name>`` declares ``slmfleet-pool-<name>`` with
:data:`POOL_RESOURCE_AMOUNT` units (see :func:`node_resources`), and every replica placed on that pool asks for one
unit. A replica can then only start on its own pool's nodes; an LLM-only pool's nodes carry only their own resource,
so no small model can land there, whatever else is free. GPU fractions and engine memory budgets come from the
plan (one number per replica, see :mod:`cluster.placement`).
"""

from __future__ import annotations

from typing import Any

from cluster.autoscaling_policy import serve_autoscaling_config
from cluster.placement import Plan
from cluster.spec import FleetSpec, ModelSpec, ServerSpec, is_loopback

POOL_RESOURCE_PREFIX = "slmfleet-pool-"
POOL_RESOURCE_AMOUNT = 10_000  # a node may host up to this many replicas; GPUs are the real limit
REPLICA_POOL_UNITS = 1
REPLICA_NUM_CPUS = 1
# The request router of models with LoRA slots: power of two choices with adapter affinity (a string, so cluster/
# never imports deployments/; tests check it names the class)
ADAPTER_ROUTER_CLASS = "deployments.model.adapter_router:AdapterAffinityRouter"


def pool_resource(pool_name: str) -> str:
    """The Ray custom resource that marks a node as a member of pool ``pool_name``."""
    return f"{POOL_RESOURCE_PREFIX}{pool_name}"


def node_resources(pool_name: str) -> dict[str, int]:
    """What each node of ``pool_name`` passes to ``ray start --resources`` (KubeRay: rayStartParams.resources)."""
    return {pool_resource(pool_name): POOL_RESOURCE_AMOUNT}


def deployment_options(plan: Plan, spec: FleetSpec, model_name: str) -> dict[str, Any]:
    """Keyword options for ``@serve.deployment`` / ``.options()`` of one model's deployment.

    Fractional SLMs: ``ray_actor_options.num_gpus`` is the plan's share. Whole-GPU models: a STRICT_PACK
    placement group of ``tensor_parallel`` one-GPU bundles; the replica actor sits in the first bundle. CPU
    placements ask for no GPU; the implicit ``local`` placement asks for no pool resource either.
    """
    placement = plan.model(model_name)
    model = spec.models[model_name]
    options: dict[str, Any] = {
        "ray_actor_options": _actor_options(placement.kind, placement.share, placement.tensor_parallel),
        "autoscaling_config": autoscaling_config(model),
        # every request reaches a replica at once, so its admission (which sees every router's requests) decides:
        # a batch, max_queued_requests waiting, as many again on their way out refused. Serve's queue at the
        # handles then holds requests only while no replica can take them (starting, or waking from zero)
        "max_ongoing_requests": model.concurrent_seqs + 2 * model.max_queued_requests,
        "max_queued_requests": model.max_queued_requests,
        "user_config": model_user_config(model),
    }
    if model.lora is not None:
        options["request_router_config"] = {"request_router_class": ADAPTER_ROUTER_CLASS}
    pool_res = {} if placement.pool not in spec.pools else {pool_resource(placement.pool): REPLICA_POOL_UNITS}
    if pool_res:
        options["ray_actor_options"]["resources"] = dict(pool_res)
    if placement.kind == "whole":
        options["placement_group_bundles"] = _bundles(placement.tensor_parallel, pool_res)
        options["placement_group_strategy"] = "STRICT_PACK"
    return options


def _actor_options(kind: str, share: float, tensor_parallel: int) -> dict[str, Any]:
    """A tp=1 engine runs in the replica and holds its GPU; with tp>1 vLLM's Ray workers hold the bundles' GPUs."""
    if kind == "fraction":
        num_gpus = share
    elif kind == "whole" and tensor_parallel == 1:
        num_gpus = 1
    else:
        num_gpus = 0
    return {"num_cpus": REPLICA_NUM_CPUS, "num_gpus": num_gpus}


def _bundles(tensor_parallel: int, pool_res: dict[str, int]) -> list[dict[str, float]]:
    """First bundle: one GPU plus the replica actor's CPU and pool unit; then one bundle per further GPU."""
    first: dict[str, float] = {"CPU": REPLICA_NUM_CPUS, "GPU": 1, **pool_res}
    return [first, *({"GPU": 1} for _ in range(tensor_parallel - 1))]


def autoscaling_config(model: ModelSpec) -> dict[str, Any]:
    """Serve's autoscaling for one model under this project's policy (:mod:`cluster.autoscaling_policy`).

    The plan reserves room for ``max_replicas``, so scaling up always fits; Serve applies the delays.
    """
    scaling = model.autoscaling
    return serve_autoscaling_config(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_ongoing_requests=scaling.target_ongoing_requests,
        upscale_delay_s=scaling.upscale_delay_s,
        downscale_delay_s=scaling.downscale_delay_s,
        idle_delay_s=scaling.idle_delay_s,
    )


def model_user_config(model: ModelSpec) -> dict[str, Any]:
    """What a model replica takes live (``reconfigure()``): its latency objective (admission and the autoscaling
    policy judge the queue wait by it) and its queue bound (admission's hard ceiling)."""
    return {"latency_objective_s": model.latency_objective_s, "max_queued_requests": model.max_queued_requests}


LOCAL_ROUTER_REPLICAS = (1, 1)
EXPOSED_ROUTER_REPLICAS = (2, 8)


def router_replica_bounds(server: ServerSpec) -> tuple[int, int]:
    """(min, max) router replicas: the spec's, else one on loopback and two to eight when exposed."""
    default_low, default_high = LOCAL_ROUTER_REPLICAS if is_loopback(server.host) else EXPOSED_ROUTER_REPLICAS
    given_low, given_high = server.router.min_replicas, server.router.max_replicas
    low = given_low or min(default_low, given_high or default_low)
    return low, given_high or max(default_high, low)


def router_autoscaling_config(server: ServerSpec) -> dict[str, Any]:
    """The router's autoscaling: Serve's default policy on ongoing requests (a router replica only waits on models)."""
    low, high = router_replica_bounds(server)
    return {
        "min_replicas": low,
        "initial_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": server.router.target_ongoing_requests,
    }


def engine_overrides(plan: Plan, model_name: str) -> dict[str, Any]:
    """vLLM engine arguments the plan decides: the memory budget and the tensor-parallel degree.

    ``distributed_executor_backend="ray"`` appears only with tensor parallelism, so vLLM's workers use the
    deployment's placement group bundles.
    """
    placement = plan.model(model_name)
    overrides: dict[str, Any] = {
        "gpu_memory_utilization": placement.gpu_memory_utilization,
        "tensor_parallel_size": placement.tensor_parallel,
    }
    if placement.kind == "whole" and placement.tensor_parallel > 1:
        overrides["distributed_executor_backend"] = "ray"
    return overrides
