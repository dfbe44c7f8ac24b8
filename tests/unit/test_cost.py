"""Prices per model (declared or derived from the pool) and the LLM-tier counterfactual: pure functions."""

import pytest

from cluster.cost import CostSummary, PriceBook, cost_ratio, derived_price, llm_reference_model, sum_costs
from cluster.spec import parse_spec

SPEC = parse_spec(
    {
        "models": {
            "smol": {"source": "x", "price_per_1k_tokens": 0.0002},
            "pooled": {"source": "x", "pool": "l4"},
            "big": {"source": "x", "tier": "llm", "pool": "h100", "tensor_parallel": 2},
            "free": {"source": "x"},
        },
        "pools": {
            "l4": {"accelerator": "L4", "gpus_per_node": 4, "gpu_memory_gib": 24, "price_per_gpu_hour": 0.8},
            "h100": {
                "accelerator": "H100",
                "gpus_per_node": 8,
                "gpu_memory_gib": 80,
                "price_per_gpu_hour": 4.0,
                "tiers": ["llm"],
            },
        },
    }
)


def test_declared_price_wins():
    book = PriceBook.from_spec(SPEC, tokens_per_hour={"smol": 1.0})
    assert book.per_1k["smol"] == 0.0002
    assert book.cost("smol", 5000) == pytest.approx(0.001)


def test_price_derived_from_the_replicas_hourly_price_and_throughput():
    # a replica costing 0.2 $/h (0.8 $/GPU-h x 0.25 GPU) serving 2,000,000 tokens/h: 0.0001 $ per 1k tokens
    assert derived_price(0.2, 2_000_000) == pytest.approx(0.0001)
    book = PriceBook.from_spec(SPEC, replica_per_hour={"pooled": 0.2}, tokens_per_hour={"pooled": 2_000_000})
    assert book.per_1k["pooled"] == pytest.approx(0.0001)


@pytest.mark.parametrize(("hourly", "rate"), [(None, 1e6), (0.5, None), (0.5, 0)])
def test_unknown_prices_stay_unknown(hourly, rate):
    assert derived_price(hourly, rate) is None
    assert PriceBook.from_spec(SPEC).cost("free", 100) is None


def test_totals_and_ratio():
    assert sum_costs([0.1, 0.2]) == pytest.approx(0.3)
    assert sum_costs([0.1, None]) is None
    assert sum_costs([]) == 0.0
    assert cost_ratio(0.05, 1.0) == 0.05
    assert cost_ratio(None, 1.0) is None
    assert cost_ratio(0.1, 0.0) is None
    summary = CostSummary.of([0.001, 0.002], [0.03, 0.03], "big")
    assert summary.ratio == pytest.approx(0.05)
    assert summary.llm_model == "big"


def test_llm_reference_model():
    assert llm_reference_model(SPEC) == "big"
    assert llm_reference_model(SPEC, "big") == "big"
    assert llm_reference_model(parse_spec({"models": {"s": {"source": "x"}}})) is None


def test_measured_throughput_derives_undeclared_prices_and_leaves_declared_ones():
    book = PriceBook.from_spec(SPEC, replica_per_hour={"pooled": 0.2})
    assert book.per_1k["pooled"] is None  # nothing measured yet
    book.observe_throughput("pooled", 2_000_000)
    assert book.per_1k["pooled"] == pytest.approx(0.0001)
    book.observe_throughput("pooled", 4_000_000)  # the replica got faster: the price follows
    assert book.per_1k["pooled"] == pytest.approx(0.00005)
    book.observe_throughput("smol", 1.0)
    assert book.per_1k["smol"] == 0.0002
    book.observe_throughput("free", 1e6)  # no hourly price: still unknown, not zero
    assert book.per_1k["free"] is None
    book.observe_throughput("pooled", None)
    assert book.per_1k["pooled"] == pytest.approx(0.00005)


def test_a_replicas_hourly_price_is_its_pools_gpu_hour_price_times_its_planned_gpus():
    from cluster.cost import replica_hourly_prices
    from cluster.placement import plan_fleet

    data = SPEC.model_dump(exclude_unset=True)
    for model in data["models"].values():
        model["params_b"] = 1.0
    spec = parse_spec(data)
    plan = plan_fleet(spec)
    hourly = replica_hourly_prices(spec, plan)
    assert hourly["big"] == pytest.approx(4.0 * 2)  # H100 price x its two tensor-parallel GPUs
    share = plan.model("pooled").share
    assert 0 < share < 1 and hourly["pooled"] == pytest.approx(0.8 * share)
    cpu_only = parse_spec({"models": {"c": {"source": "x"}}})
    assert replica_hourly_prices(cpu_only, plan_fleet(cpu_only)) == {}
