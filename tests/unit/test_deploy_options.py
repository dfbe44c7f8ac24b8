"""Plan -> Ray Serve options: shares, pool pinning, placement groups, autoscaling, engine overrides (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.autoscaling_policy import POLICY_FUNCTION
from cluster.deploy_options import (
    POOL_RESOURCE_AMOUNT,
    autoscaling_config,
    deployment_options,
    engine_overrides,
    node_resources,
    pool_resource,
    router_autoscaling_config,
    router_replica_bounds,
)
from cluster.placement import plan_fleet
from cluster.spec import ServerSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
# The keys Ray Serve 2.60 accepts in ray_actor_options and @serve.deployment (ray/serve/_private/config.py).
ACTOR_OPTION_KEYS = {"accelerator_type", "memory", "num_cpus", "num_gpus", "resources", "runtime_env", "label_selector"}
DEPLOYMENT_KEYS = {
    "ray_actor_options",
    "autoscaling_config",
    "max_ongoing_requests",
    "max_queued_requests",
    "placement_group_bundles",
    "placement_group_strategy",
    "user_config",
}


@pytest.fixture(scope="module")
def production():
    spec = load_spec(ROOT / "examples" / "production.yaml")
    return spec, plan_fleet(spec)


def assert_actor_fits_first_bundle(options: dict) -> None:
    """Serve's own rule: the replica actor is placed in bundle 0, so its demand must be a subset of it."""
    bundle = options["placement_group_bundles"][0]
    actor = options["ray_actor_options"]
    assert actor["num_cpus"] <= bundle.get("CPU", 0)
    assert actor["num_gpus"] <= bundle.get("GPU", 0)
    for key, amount in actor.get("resources", {}).items():
        assert amount <= bundle.get(key, 0)


def test_pool_resource_naming():
    assert pool_resource("l4") == "slmfleet-pool-l4"
    assert node_resources("h100") == {"slmfleet-pool-h100": POOL_RESOURCE_AMOUNT}


def test_slm_asks_for_its_share_on_its_pool(production):
    spec, plan = production
    options = deployment_options(plan, spec, "qwen2-5-7b")
    placement = plan.model("qwen2-5-7b")
    assert set(options) <= DEPLOYMENT_KEYS
    assert "placement_group_bundles" not in options
    actor = options["ray_actor_options"]
    assert set(actor) <= ACTOR_OPTION_KEYS
    assert actor == {"num_cpus": 1, "num_gpus": placement.share, "resources": {"slmfleet-pool-l4": 1}}
    assert 0 < actor["num_gpus"] < 1


def test_share_and_engine_budget_come_from_the_same_number(production):
    spec, plan = production
    for placement in plan.models:
        if placement.kind != "fraction":
            continue
        num_gpus = deployment_options(plan, spec, placement.model)["ray_actor_options"]["num_gpus"]
        utilization = engine_overrides(plan, placement.model)["gpu_memory_utilization"]
        assert utilization == pytest.approx(num_gpus * plan.headroom, abs=1e-4)
        assert utilization <= num_gpus


def test_tensor_parallel_llm_is_one_strict_pack_group(production):
    spec, plan = production
    options = deployment_options(plan, spec, "llama-3-3-70b")
    assert options["placement_group_strategy"] == "STRICT_PACK"
    bundles = options["placement_group_bundles"]
    assert bundles == [{"CPU": 1, "GPU": 1, "slmfleet-pool-h100": 1}, {"GPU": 1}, {"GPU": 1}, {"GPU": 1}]
    assert options["ray_actor_options"]["num_gpus"] == 0  # vLLM's Ray workers hold the GPUs
    assert_actor_fits_first_bundle(options)
    assert engine_overrides(plan, "llama-3-3-70b") == {
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 4,
        "distributed_executor_backend": "ray",
    }


def test_single_gpu_llm_holds_its_gpu_in_the_replica():
    spec = parse_spec(
        {
            "models": {"big": {"source": "o/b", "tier": "llm", "params_b": 8.0}},
            "pools": {"h100": {"accelerator": "H100", "gpus_per_node": 8, "gpu_memory_gib": 80, "tiers": ["llm"]}},
        }
    )
    plan = plan_fleet(spec)
    options = deployment_options(plan, spec, "big")
    assert options["placement_group_bundles"] == [{"CPU": 1, "GPU": 1, "slmfleet-pool-h100": 1}]
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert_actor_fits_first_bundle(options)
    assert "distributed_executor_backend" not in engine_overrides(plan, "big")


def test_local_placement_asks_for_no_gpu_and_no_pool():
    spec = load_spec(ROOT / "fleet.yaml")
    plan = plan_fleet(spec)
    options = deployment_options(plan, spec, "smol")
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    assert "placement_group_bundles" not in options
    assert engine_overrides(plan, "smol") == {"gpu_memory_utilization": 0.15, "tensor_parallel_size": 1}


def test_request_limits_and_autoscaling(production):
    spec, plan = production
    model = spec.models["qwen2-5-coder-1-5b"]
    options = deployment_options(plan, spec, "qwen2-5-coder-1-5b")
    assert options["max_ongoing_requests"] == model.concurrent_seqs + 2 * model.max_queued_requests
    assert options["max_queued_requests"] == model.max_queued_requests
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": 2,
        "target_ongoing_requests": model.autoscaling.target_ongoing_requests,
        "upscale_delay_s": model.autoscaling.upscale_delay_s,
        "downscale_delay_s": model.autoscaling.downscale_delay_s,
        "downscale_to_zero_delay_s": model.autoscaling.idle_delay_s,
        "policy": {"policy_function": POLICY_FUNCTION},
    }
    assert options["user_config"] == {
        "latency_objective_s": model.latency_objective_s,
        "max_queued_requests": model.max_queued_requests,
    }


@pytest.mark.parametrize(
    ("host", "router", "bounds"),
    [
        ("127.0.0.1", {}, (1, 1)),
        ("0.0.0.0", {}, (2, 8)),
        ("0.0.0.0", {"min_replicas": 3}, (3, 8)),
        ("0.0.0.0", {"max_replicas": 1}, (1, 1)),
        ("localhost", {"max_replicas": 4}, (1, 4)),
        ("10.0.0.5", {"min_replicas": 12}, (12, 12)),
    ],
)
def test_router_replicas_follow_exposure_unless_the_spec_says(host, router, bounds):
    server = ServerSpec(host=host, router=router)
    assert router_replica_bounds(server) == bounds
    config = router_autoscaling_config(server)
    assert (config["min_replicas"], config["initial_replicas"], config["max_replicas"]) == (bounds[0], *bounds)
    assert "policy" not in config  # Serve's default policy: ongoing requests per replica


def test_autoscaling_config_keeps_serve_ordering_rules(production):
    spec, _ = production
    for model in spec.models.values():
        config = autoscaling_config(model)
        assert config["min_replicas"] <= config["initial_replicas"] <= config["max_replicas"]
        assert config["max_replicas"] >= 1 and config["target_ongoing_requests"] > 0


def test_every_model_of_the_production_plan_gets_options(production):
    spec, plan = production
    pinned_to = {
        name: next(iter(deployment_options(plan, spec, name)["ray_actor_options"]["resources"])) for name in spec.models
    }
    assert {pinned_to[m.model] for m in plan.models if m.tier == "slm"} == {"slmfleet-pool-l4"}
    assert {pinned_to[m.model] for m in plan.models if m.tier == "llm"} == {"slmfleet-pool-h100"}


def test_unknown_model_is_a_key_error(production):
    _, plan = production
    with pytest.raises(KeyError, match="nope"):
        engine_overrides(plan, "nope")
