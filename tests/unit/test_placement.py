"""Placement planner: worked examples, error messages, and property tests over random fleets and pools."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.memory import estimate_engine_memory
from cluster.placement import (
    HEADROOM,
    SHARE_UNITS,
    PlacementError,
    Plan,
    packing_lower_bound,
    plan_fleet,
    render_plan,
    share_units,
    units_to_share,
    units_to_utilization,
)
from cluster.spec import FleetSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
L4 = {"accelerator": "L4", "gpus_per_node": 4, "gpu_memory_gib": 24, "max_nodes": 2, "tiers": ["slm"]}
H100 = {"accelerator": "H100", "gpus_per_node": 8, "gpu_memory_gib": 80, "max_nodes": 1, "tiers": ["llm"]}


def fleet(models: dict[str, dict[str, Any]], pools: dict[str, dict[str, Any]] | None = None) -> FleetSpec:
    return parse_spec({"models": models, "pools": pools or {}})


def slm_of(gib: float, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    """An SLM whose engine memory is exactly ``gib``."""
    return {"source": "org/m", "memory_gib": gib, "autoscaling": {"max_replicas": replicas}, **extra}


def llm_of(params_b: float, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "source": "org/big",
        "tier": "llm",
        "params_b": params_b,
        "autoscaling": {"max_replicas": replicas},
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------------
# Share arithmetic


def test_share_and_utilization_come_from_one_number():
    usable = 24 * HEADROOM
    units = share_units(10.0, usable)
    assert units == math.ceil(10.0 / usable * 100)
    assert units_to_share(units) * usable >= 10.0  # the share covers the engine
    assert units_to_utilization(units) == pytest.approx(units_to_share(units) * HEADROOM)
    assert units_to_utilization(units) * 24 >= 10.0 - 1e-9  # so does the engine's own budget


def test_full_card_of_shares_stays_under_headroom():
    for units in range(1, SHARE_UNITS + 1):
        assert units_to_utilization(units) <= units / SHARE_UNITS * HEADROOM
    assert sum(units_to_utilization(u) for u in (33, 33, 34)) <= HEADROOM


def test_share_rounds_up_never_down():
    usable = 24 * HEADROOM
    assert share_units(usable * 0.5, usable) == 50
    assert share_units(usable * 0.5001, usable) == 51
    assert share_units(0.0001, usable) == 1


# ---------------------------------------------------------------------------------------------------------------
# Worked examples


def test_default_local_fleet_plans_on_the_cpu():
    plan = plan_fleet(load_spec(ROOT / "fleet.yaml"))
    for placement in plan.models:
        assert (placement.pool, placement.kind, placement.share) == ("local", "cpu", 0.0)
        assert placement.gpu_memory_utilization == 0.15
    assert [r.gpus for r in plan.replicas] == [(), ()]
    assert plan.pools == ()
    assert "local CPU placement" in render_plan(plan)


def test_local_engine_fraction_comes_from_the_spec():
    spec = fleet({"m": {"source": "bundled:x", "engine": {"gpu_memory_utilization": 0.3}}})
    assert plan_fleet(spec).model("m").gpu_memory_utilization == 0.3


def test_two_halves_share_a_gpu_but_a_bit_more_does_not():
    usable = 24 * HEADROOM
    plan = plan_fleet(fleet({"a": slm_of(usable / 2), "b": slm_of(usable / 2)}, {"l4": L4}))
    assert {r.gpus for r in plan.replicas} == {(0,)}
    assert plan.totals()["gpus_used"] == 1
    plan = plan_fleet(fleet({"a": slm_of(usable / 2 + 0.1), "b": slm_of(usable / 2)}, {"l4": L4}))
    assert plan.totals()["gpus_used"] == 2


def test_first_fit_decreasing_packs_big_items_first():
    usable = 24 * HEADROOM
    models = {"small": slm_of(usable * 0.3, replicas=2), "big": slm_of(usable * 0.7, replicas=2)}
    plan = plan_fleet(fleet(models, {"l4": L4}))
    by_gpu = defaultdict(list)
    for row in plan.replicas:
        by_gpu[row.gpus].append(row.model)
    assert sorted(map(sorted, by_gpu.values())) == [["big", "small"], ["big", "small"]]


def test_replicas_cover_autoscaling_maxima():
    plan = plan_fleet(
        fleet({"a": slm_of(5, replicas=3) | {"autoscaling": {"min_replicas": 0, "max_replicas": 3}}}, {"l4": L4})
    )
    assert [r.replica for r in plan.replicas] == [0, 1, 2]
    assert (plan.model("a").min_replicas, plan.model("a").max_replicas) == (0, 3)


def test_llm_gets_smallest_power_of_two_on_one_node():
    spec = fleet({"big": llm_of(70.0)}, {"h100": H100})
    big = plan_fleet(spec).model("big")
    memory = estimate_engine_memory("big", spec.models["big"])
    tp = big.tensor_parallel
    assert tp in (1, 2, 4, 8)
    assert memory.per_gpu_gib(tp) <= 80 * HEADROOM
    assert tp == 1 or memory.per_gpu_gib(tp // 2) > 80 * HEADROOM
    (row,) = plan_fleet(spec).replicas
    assert len(row.gpus) == tp and row.node == 0


def test_declared_tensor_parallel_is_kept():
    plan = plan_fleet(fleet({"big": llm_of(8.0, tensor_parallel=4)}, {"h100": H100}))
    assert plan.model("big").tensor_parallel == 4
    assert plan.replicas[0].gpus == (0, 1, 2, 3)


def test_nothing_small_lands_on_an_llm_only_pool():
    usable = 24 * HEADROOM
    pools = {"l4": L4 | {"max_nodes": 1}, "h100": H100}
    with pytest.raises(PlacementError, match=r"'s'"):
        plan_fleet(fleet({"s": slm_of(usable * 0.6, replicas=5)}, pools))  # 5 GPUs needed, the L4 node has 4


def test_mixed_pool_keeps_llm_gpus_whole():
    mixed = {"accelerator": "A100", "gpus_per_node": 4, "gpu_memory_gib": 80, "max_nodes": 1, "tiers": ["slm", "llm"]}
    plan = plan_fleet(fleet({"big": llm_of(30.0, tensor_parallel=2), "s": slm_of(5, replicas=3)}, {"a": mixed}))
    llm_gpus = {(r.node, g) for r in plan.replicas if r.model == "big" for g in r.gpus}
    slm_gpus = {(r.node, g) for r in plan.replicas if r.model == "s" for g in r.gpus}
    assert len(llm_gpus) == 2 and slm_gpus and not llm_gpus & slm_gpus


def test_pinned_pool_is_used_even_when_another_comes_first():
    pools = {"a": L4, "b": L4 | {"accelerator": "A10G"}}
    plan = plan_fleet(fleet({"x": slm_of(4), "y": slm_of(4, pool="b")}, pools))
    assert (plan.model("x").pool, plan.model("y").pool) == ("a", "b")


def test_pin_to_a_pool_of_the_wrong_tier_is_an_error():
    with pytest.raises(PlacementError, match=r"'s'.*pinned to pool 'h100'.*tiers"):
        plan_fleet(fleet({"s": slm_of(4, pool="h100")}, {"l4": L4, "h100": H100}))


def test_declared_engine_utilization_is_a_floor_on_the_share():
    plan = plan_fleet(fleet({"s": slm_of(2.0, engine={"gpu_memory_utilization": 0.45})}, {"l4": L4}))
    s = plan.model("s")
    assert s.gpu_memory_utilization >= 0.45
    assert s.share == pytest.approx(0.5)


def test_config_json_sizes_the_model():
    config = {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }
    spec = fleet({"q": {"source": "org/q", "params_b": 7.0}}, {"l4": L4})
    with_config = plan_fleet(spec, {"q": config}).model("q")
    without = plan_fleet(spec).model("q")
    assert with_config.memory.source == "config.json"
    assert with_config.share < without.share


def test_production_example_plans_as_documented():
    plan = plan_fleet(load_spec(ROOT / "examples" / "production.yaml"))
    slms = [m for m in plan.models if m.tier == "slm"]
    assert len(slms) >= 12
    assert {m.pool for m in slms} == {"l4"}
    big = plan.model("llama-3-3-70b")
    assert (big.pool, big.kind, big.tensor_parallel) == ("h100", "whole", 4)
    assert plan.model("qwen2-5-32b").tensor_parallel == 2  # derived, not declared
    totals = plan.totals()
    assert totals["lower_bound"] <= totals["packing_bound"] <= totals["gpus_used"] < totals["one_model_per_gpu"]
    assert totals["gpus_used"] <= 1.11 * totals["lower_bound"]
    assert json.loads(json.dumps(plan.to_dict()))["totals"] == totals


def test_render_lists_every_replica_and_totals():
    plan = plan_fleet(
        fleet({"big": llm_of(70.0, tensor_parallel=4), "s": slm_of(4, replicas=2)}, {"l4": L4, "h100": H100})
    )
    text = render_plan(plan)
    lines = text.splitlines()
    assert lines[0].split() == ["pool", "node", "gpu", "model", "replica", "share", "GiB", "mem", "frac"]
    assert any(line.split()[:4] == ["h100", "0", "0-3", "big"] and "4x1.00" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("l4 ")) == 2
    assert lines[-1].startswith("total: 5 GPUs used, vs 6 one-model-per-GPU")


# ---------------------------------------------------------------------------------------------------------------
# Errors a person can act on


def test_llm_too_big_for_any_node_names_model_need_and_offer():
    with pytest.raises(PlacementError) as info:
        plan_fleet(fleet({"huge": llm_of(400.0)}, {"h100": H100}))
    message = str(info.value)
    assert "'huge'" in message and "GiB per engine" in message
    assert "pool 'h100'" in message and "72.0 GiB usable per GPU" in message and "8 x 80 GiB" in message


def test_declared_tensor_parallel_above_node_size_is_an_error():
    with pytest.raises(PlacementError, match=r"'big'.*tensor_parallel 16"):
        plan_fleet(fleet({"big": llm_of(70.0, tensor_parallel=16)}, {"h100": H100}))


def test_slm_bigger_than_a_gpu_is_an_error():
    with pytest.raises(PlacementError, match=r"'fat'.*30\.0 GiB.*21\.6 GiB usable"):
        plan_fleet(fleet({"fat": slm_of(30.0)}, {"l4": L4}))


def test_llm_without_llm_pool_is_an_error():
    with pytest.raises(PlacementError, match=r"'big'.*tiers include 'llm'"):
        plan_fleet(fleet({"big": llm_of(8.0)}, {"l4": L4}))


def test_gpu_plan_needs_a_size():
    with pytest.raises(PlacementError, match=r"'m'.*params_b or memory_gib"):
        plan_fleet(fleet({"m": {"source": "bundled:x"}}, {"l4": L4}))


# ---------------------------------------------------------------------------------------------------------------
# Packing lower bound


@pytest.mark.parametrize(
    ("units", "bound"),
    [([], 0), ([50, 50], 1), ([51, 50], 2), ([60, 60, 60], 3), ([60, 60, 30, 30, 30], 3), ([10] * 25, 3)],
)
def test_packing_lower_bound_known_cases(units, bound):
    assert packing_lower_bound(units) == bound


# ---------------------------------------------------------------------------------------------------------------
# Property tests over random fleets and pools

POOL_NAMES = ["p0", "p1", "p2"]


@st.composite
def pools_strategy(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    count = draw(st.integers(1, 3))
    return {
        name: {
            "accelerator": draw(st.sampled_from(["L4", "A10G", "A100", "H100"])),
            "gpus_per_node": draw(st.sampled_from([0, 1, 2, 4, 4, 8, 8])),  # 0: a CPU pool
            "gpu_memory_gib": draw(st.sampled_from([16, 22.5, 24, 40, 48, 80])),
            "max_nodes": draw(st.integers(1, 6)),
            "tiers": draw(st.sampled_from([["slm"], ["llm"], ["slm", "llm"], ["slm", "llm"]])),
        }
        for name in POOL_NAMES[:count]
    }


@st.composite
def model_strategy(draw: st.DrawFn, pool_names: list[str]) -> dict[str, Any]:
    tier = draw(st.sampled_from(["slm", "slm", "llm"]))
    max_replicas = draw(st.integers(1, 4))
    model: dict[str, Any] = {
        "source": "org/model",
        "tier": tier,
        "max_model_len": draw(st.sampled_from([512, 2048, 4096, 8192])),
        "concurrent_seqs": draw(st.integers(1, 16)),
        "dtype": draw(st.sampled_from(["auto", "bfloat16", "float32"])),
        "autoscaling": {
            "min_replicas": draw(st.integers(1 if tier == "llm" else 0, max_replicas)),
            "max_replicas": max_replicas,
        },
    }
    if draw(st.booleans()):
        model["memory_gib"] = draw(st.floats(0.5, 120 if tier == "llm" else 20))
    else:
        model["params_b"] = draw(st.floats(0.1, 40 if tier == "llm" else 8))
    if draw(st.integers(0, 4)) == 0:
        model["tensor_parallel"] = draw(st.sampled_from([1, 2, 4, 8]))
    if draw(st.integers(0, 4)) == 0:
        model["pool"] = draw(st.sampled_from(pool_names))
    if draw(st.integers(0, 5)) == 0:
        model["engine"] = {"gpu_memory_utilization": draw(st.floats(0.05, 0.9))}
    return model


@st.composite
def fleet_strategy(draw: st.DrawFn) -> FleetSpec:
    pools = draw(pools_strategy())
    count = draw(st.integers(1, 8))
    models = {f"m{i}": draw(model_strategy(list(pools))) for i in range(count)}
    return fleet(models, pools)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan_or_error(spec: FleetSpec) -> Plan | PlacementError:
    try:
        return plan_fleet(spec)
    except PlacementError as exc:
        return exc


@PROPERTY
@given(fleet_strategy())
def test_every_model_is_placed_or_the_error_names_one(spec):
    result = _plan_or_error(spec)
    if isinstance(result, PlacementError):
        assert any(f"'{name}'" in str(result) for name in spec.models)
        return
    for name, model in spec.models.items():
        rows = [r for r in result.replicas if r.model == name]
        assert [r.replica for r in rows] == list(range(model.autoscaling.max_replicas))
        assert {r.pool for r in rows} == {result.model(name).pool}


@PROPERTY
@given(fleet_strategy())
def test_no_gpu_is_oversubscribed(spec):
    plan = _plan_or_error(spec)
    if isinstance(plan, PlacementError):
        return
    units: dict[tuple[str, int | None, int], int] = defaultdict(int)
    fractions: dict[tuple[str, int | None, int], float] = defaultdict(float)
    for row in plan.replicas:
        pool = spec.pools[row.pool]
        for gpu in row.gpus:
            units[(row.pool, row.node, gpu)] += round(row.share * SHARE_UNITS)
            assert 0 <= gpu < pool.gpus_per_node
            assert row.node is not None and 0 <= row.node < pool.max_nodes
        if plan.model(row.model).kind == "fraction":
            fractions[(row.pool, row.node, row.gpus[0])] += row.engine_memory_fraction
            assert row.share * pool.gpu_memory_gib * HEADROOM >= row.gib - 1e-6  # the share covers the engine
            assert row.engine_memory_fraction * pool.gpu_memory_gib >= row.gib - 1e-3
    assert all(total <= SHARE_UNITS for total in units.values())
    assert all(total <= HEADROOM + 1e-9 for total in fractions.values())


@PROPERTY
@given(fleet_strategy())
def test_whole_gpu_groups_are_never_shared_and_sit_on_one_node(spec):
    plan = _plan_or_error(spec)
    if isinstance(plan, PlacementError):
        return
    owners: dict[tuple[str, int | None, int], list[str]] = defaultdict(list)
    for row in plan.replicas:
        for gpu in row.gpus:
            owners[(row.pool, row.node, gpu)].append(f"{row.model}/{row.replica}")
    for row in plan.replicas:
        placement = plan.model(row.model)
        if placement.kind != "whole":
            continue
        assert len(row.gpus) == placement.tensor_parallel == len(set(row.gpus))
        assert all(owners[(row.pool, row.node, g)] == [f"{row.model}/{row.replica}"] for g in row.gpus)
        declared = spec.models[row.model].tensor_parallel
        assert placement.tensor_parallel == declared or (
            declared is None and placement.tensor_parallel & (placement.tensor_parallel - 1) == 0
        )


@PROPERTY
@given(fleet_strategy())
def test_tiers_are_respected(spec):
    plan = _plan_or_error(spec)
    if isinstance(plan, PlacementError):
        return
    for placement in plan.models:
        pool = spec.pools[placement.pool]
        model = spec.models[placement.model]
        tier = model.tier
        assert tier in pool.tiers
        if model.pool is not None:
            assert placement.pool == model.pool


@PROPERTY
@given(fleet_strategy())
def test_plan_is_deterministic_and_ignores_model_order(spec):
    first = _plan_or_error(spec)
    again = _plan_or_error(spec)
    reordered = _plan_or_error(spec.model_copy(update={"models": dict(reversed(spec.models.items()))}))
    if isinstance(first, PlacementError):
        assert str(again) == str(reordered) == str(first)
    else:
        assert first == again == reordered


@PROPERTY
@given(fleet_strategy())
def test_gpu_count_sits_between_the_bounds(spec):
    plan = _plan_or_error(spec)
    if isinstance(plan, PlacementError):
        return
    for pool in plan.pools:
        assert pool.lower_bound <= pool.packing_bound <= pool.gpus_used <= pool.one_model_per_gpu
        assert pool.nodes_used <= pool.max_nodes


@PROPERTY
@given(
    st.lists(st.integers(1, SHARE_UNITS), min_size=1, max_size=12),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 4),
)
def test_a_fleet_that_fits_one_replica_per_gpu_is_always_placed(units, gpus_per_node, max_nodes):
    usable = 24 * HEADROOM
    models = {f"m{i}": slm_of(u / SHARE_UNITS * usable * 0.999) for i, u in enumerate(units)}
    pool = L4 | {"gpus_per_node": gpus_per_node, "max_nodes": max_nodes}
    result = _plan_or_error(fleet(models, {"l4": pool}))
    if len(units) <= gpus_per_node * max_nodes:
        assert isinstance(result, Plan)
        assert result.totals()["gpus_used"] <= len(units)
