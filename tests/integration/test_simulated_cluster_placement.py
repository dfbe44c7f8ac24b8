"""The placement plan deployed for real on a simulated multi-node Ray cluster, checked from inside every replica.

A head (no GPUs), one 4-GPU L4 node and one 8-GPU H100 node, all on this machine with logical GPUs and the pool
resources of :func:`cluster.deploy_options.node_resources`. Every model of ``specs/simulated_cluster.yaml`` is
deployed with the plan's Serve options (one Serve application per model, so one can be redeployed alone): the two
SmolLM2 models as real vLLM engines (``ModelServer``), the rest as ``PlacementProbe`` replicas. Each replica reports
its node, GPU ids, Ray resources and engine memory fraction; the test checks them against the plan and the
per-GPU budget, then scales one deployment up to its plan maximum and checks again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from cluster.deploy_options import autoscaling_config, engine_overrides, pool_resource
from cluster.model_store import resolve_source
from cluster.placement import Plan, plan_fleet
from cluster.spec import FleetSpec, load_spec
from tests.integration.simulated_cluster import simulated_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(find_spec("vllm") is None, reason="the real SmolLM2 engines need vLLM (the cpu extra)"),
]

SPEC_PATH = Path(__file__).parent / "specs" / "simulated_cluster.yaml"
REAL_ENGINES = ("smol-a", "smol-b")  # at most two real engines: ~3 GB of RAM each
SCALED_MODEL = "qwen-0-5b"
EPS = 1e-6
SIMULATED_NODES: dict[str, dict[str, Any]] = {
    "l4": {"num_cpus": 12, "num_gpus": 4, "accelerator": "L4"},
    "h100": {"num_cpus": 4, "num_gpus": 8, "accelerator": "H100"},
}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: the simulated cluster and the deployed plan


@pytest.fixture(scope="module")
def spec() -> FleetSpec:
    return load_spec(SPEC_PATH)


@pytest.fixture(scope="module")
def plan(spec: FleetSpec) -> Plan:
    return plan_fleet(spec)


@pytest.fixture(scope="module")
def cluster() -> Any:
    """Head + L4 node + H100 node with logical GPUs; Serve without an HTTP proxy (no port to collide on)."""
    with simulated_cluster(SIMULATED_NODES) as sim:
        yield sim


@pytest.fixture(scope="module")
def pool_nodes(cluster: Any) -> dict[str, str]:
    """Ray node id -> pool name, from the pool resource each simulated node declares ('head' for the head)."""
    import ray

    nodes: dict[str, str] = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        pools = [p for p in SIMULATED_NODES if pool_resource(p) in node["Resources"]]
        nodes[node["NodeID"]] = pools[0] if pools else "head"
    assert sorted(nodes.values()) == ["h100", "head", "l4"]
    return nodes


@pytest.fixture(scope="module")
def deployed(cluster: Any, spec: FleetSpec, plan: Plan) -> dict[str, float]:
    """Every model deployed as the plan says: probes first, then the real engines one after another.

    Returns deploy seconds per model. Engines that share a (logical) card start one at a time, as
    docs/placement.md advises for vLLM's start-up profiling.
    """
    from ray import serve

    for name in REAL_ENGINES:  # convert the bundled weights once here, not in racing replicas
        resolve_source(spec.models[name].source)
    seconds: dict[str, float] = {}
    order = [n for n in sorted(spec.models) if n not in REAL_ENGINES] + list(REAL_ENGINES)
    for name in order:
        start = time.monotonic()
        serve.run(model_app(plan, spec, name), name=app_name(name), route_prefix=None)
        seconds[name] = time.monotonic() - start
    print(f"\ndeploy seconds: { {k: round(v, 1) for k, v in seconds.items()} }")
    return seconds


# ---------------------------------------------------------------------------------------------------------------
# Building and querying the deployments


def app_name(model: str) -> str:
    from cluster.render.common import model_deployment_name

    return model_deployment_name(model)


def model_app(plan: Plan, spec: FleetSpec, name: str, **overrides: Any) -> Any:
    """One model's app with the plan's options (as the rendered Serve config has it); probes stand in for big
    engines."""
    from ray import serve

    from cluster.render.serve_config import model_deployment
    from deployments.model.server import ModelServer
    from deployments.placement_probe import PlacementProbe

    cls = ModelServer if name in REAL_ENGINES else PlacementProbe
    options = {**model_deployment(plan, spec, name), **overrides}
    return serve.deployment(cls).options(**options).bind(name, spec.models[name], engine_overrides(plan, name))


def running_replicas(model: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name(model)].deployments[app_name(model)]
    return int(status.replica_states.get("RUNNING", 0))


def collect_placements(model: str, expected: int, rounds: int = 30) -> list[dict[str, Any]]:
    """``placement()`` of every running replica: concurrent calls through the handle until all have answered."""
    from ray import serve

    if expected == 0:
        return []
    handle = serve.get_deployment_handle(app_name(model), app_name(model))
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        responses = [handle.placement.remote() for _ in range(max(4, 3 * expected))]
        for response in responses:
            info = response.result(timeout_s=60)
            seen[info["replica_id"]] = info
        if len(seen) >= expected:
            break
    assert len(seen) == expected, f"{model}: {len(seen)} replicas answered, {expected} running"
    return list(seen.values())


def all_placements(spec: FleetSpec) -> dict[str, list[dict[str, Any]]]:
    return {name: collect_placements(name, running_replicas(name)) for name in sorted(spec.models)}


# ---------------------------------------------------------------------------------------------------------------
# The checks


def gpu_slots(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(node id, GPU id) pairs this replica's engine holds: its own GPU, or its bundles' GPUs under tensor parallel."""
    holders = info.get("bundle_holders")
    if holders:
        return [(h["node_id"], gpu) for h in holders for gpu in h["gpu_ids"]]
    return [(info["node_id"], gpu) for gpu in info["gpu_ids"]]


def check_replica(info: dict[str, Any], plan: Plan, pool_nodes: dict[str, str]) -> None:
    """One replica sits on its plan's pool, holds exactly the plan's share, and runs with the plan's memory fraction."""
    placed = plan.model(info["model"])
    where = f"{info['model']} replica {info['replica_id']}"
    assert pool_nodes[info["node_id"]] == placed.pool, f"{where} runs on {pool_nodes[info['node_id']]}"
    assert info["assigned_resources"].get(pool_resource(placed.pool)) == 1, where
    assert info["gpu_memory_utilization"] == pytest.approx(placed.gpu_memory_utilization), where
    if placed.kind == "fraction":
        assert info["assigned_resources"].get("GPU") == pytest.approx(placed.share), where
        assert len(info["gpu_ids"]) == 1, f"{where}: GPU ids {info['gpu_ids']}"
        assert info["cuda_visible_devices"] == info["gpu_ids"][0], where
        assert info["placement_group"] is None, where
        return
    group = info["placement_group"]
    assert group is not None, f"{where}: a whole-GPU model runs in a placement group"
    assert group["strategy"] == "STRICT_PACK", where
    assert len(group["bundles"]) == placed.tensor_parallel, where
    assert {pool_nodes[n] for n in group["bundle_nodes"]} == {placed.pool}, f"{where}: bundles {group['bundle_nodes']}"
    assert len(set(group["bundle_nodes"])) == 1, f"{where}: bundles span nodes"
    assert info["tensor_parallel_size"] == placed.tensor_parallel, where
    holders = info["bundle_holders"]
    assert all(len(h["gpu_ids"]) == 1 for h in holders), f"{where}: {holders}"
    assert len({h["gpu_ids"][0] for h in holders}) == placed.tensor_parallel, f"{where}: GPUs not distinct"


def check_budget(placements: dict[str, list[dict[str, Any]]], plan: Plan, pool_nodes: dict[str, str]) -> None:
    """Every replica where the plan says; per GPU, shares sum to <= 1 and engine fractions to <= the headroom."""
    shares: dict[tuple[str, str], float] = defaultdict(float)
    fractions: dict[tuple[str, str], float] = defaultdict(float)
    tiers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for model, replicas in placements.items():
        placed = plan.model(model)
        assert len(replicas) <= placed.max_replicas, f"{model}: {len(replicas)} replicas"
        for info in replicas:
            check_replica(info, plan, pool_nodes)
            for slot in gpu_slots(info):
                shares[slot] += placed.share
                fractions[slot] += info["gpu_memory_utilization"]
                tiers[slot].add(placed.tier)
    for slot, total in shares.items():
        assert total <= 1.0 + EPS, f"GPU {slot}: shares sum to {total}"
        assert fractions[slot] <= plan.headroom + EPS, f"GPU {slot}: engine fractions sum to {fractions[slot]}"
        assert len(tiers[slot]) == 1, f"GPU {slot} holds tiers {tiers[slot]}"
        if "llm" in tiers[slot]:
            assert pool_nodes[slot[0]] == "h100"
            assert total == pytest.approx(1.0), f"LLM GPU {slot} shared: {total}"
        else:
            assert pool_nodes[slot[0]] == "l4", f"small model on {pool_nodes[slot[0]]} GPU {slot}"


def describe(placements: dict[str, list[dict[str, Any]]], pool_nodes: dict[str, str]) -> str:
    lines = []
    for model, replicas in placements.items():
        for info in replicas:
            slots = ",".join(f"{pool_nodes[n]}:{g}" for n, g in gpu_slots(info))
            lines.append(f"  {model:<10} {info['replica_id']:<10} gpus={slots} mem={info['gpu_memory_utilization']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Tests (in file order: the scale-up comes last)


def test_every_replica_sits_where_the_plan_says(
    deployed: dict[str, float], spec: FleetSpec, plan: Plan, pool_nodes: dict[str, str]
) -> None:
    placements = all_placements(spec)
    print("\nplacements:\n" + describe(placements, pool_nodes))
    assert set(placements) == set(spec.models)
    for name, replicas in placements.items():
        assert len(replicas) == plan.model(name).min_replicas, name
    check_budget(placements, plan, pool_nodes)
    real = [info for name in REAL_ENGINES for info in placements[name]]
    assert all(info["gpu_memory_utilization"] == plan.model(info["model"]).gpu_memory_utilization for info in real)


def test_a_real_engine_generates_through_its_handle(deployed: dict[str, float], spec: FleetSpec, plan: Plan) -> None:
    """...and reports its measured throughput, from which the router derives the price of its GPU share."""
    from ray import serve

    from cluster.cost import PriceBook, replica_hourly_prices
    from deployments.protocol import GenerationRequest

    handle = serve.get_deployment_handle(app_name(REAL_ENGINES[0]), app_name(REAL_ENGINES[0]))
    request = GenerationRequest(
        request_id="placement-it",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0.0,
    )
    start = time.monotonic()
    result = handle.generate.remote(request).result(timeout_s=120)
    print(f"\ngeneration {time.monotonic() - start:.2f}s: {result.text!r}")
    assert result.error is None, result.error
    assert result.model == REAL_ENGINES[0]
    assert result.text.strip()
    assert result.completion_tokens > 0

    rate = result.extra["tokens_per_hour"]
    assert rate > 0
    book = PriceBook.from_spec(spec, replica_per_hour=replica_hourly_prices(spec, plan))
    book.observe_throughput(REAL_ENGINES[0], rate)
    share = plan.model(REAL_ENGINES[0]).share
    print(f"measured {rate:,.0f} tokens/h on {share} GPU -> {book.per_1k[REAL_ENGINES[0]]:.6f} per 1k tokens")
    assert book.per_1k[REAL_ENGINES[0]] == pytest.approx(0.8 * share / rate * 1000)


def test_scaling_up_stays_within_the_plan(
    deployed: dict[str, float], spec: FleetSpec, plan: Plan, pool_nodes: dict[str, str]
) -> None:
    from ray import serve

    target = plan.model(SCALED_MODEL).max_replicas
    assert target > running_replicas(SCALED_MODEL), "the scaled model must have room to grow"
    # the plan's autoscaling bounds with the floor raised to the plan's maximum, as load would push it
    scaling = {**autoscaling_config(spec.models[SCALED_MODEL]), "min_replicas": target, "initial_replicas": target}
    start = time.monotonic()
    serve.run(
        model_app(plan, spec, SCALED_MODEL, autoscaling_config=scaling),
        name=app_name(SCALED_MODEL),
        route_prefix=None,
    )
    print(f"\nscaled {SCALED_MODEL} to {target} replicas in {time.monotonic() - start:.1f}s")
    assert running_replicas(SCALED_MODEL) == target
    placements = all_placements(spec)
    print("placements after scale-up:\n" + describe(placements, pool_nodes))
    assert len(placements[SCALED_MODEL]) == target
    check_budget(placements, plan, pool_nodes)
