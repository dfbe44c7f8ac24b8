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


def test_price_derived_from_pool_share_and_throughput():
    # 0.8 $/GPU-h x 0.25 GPU / 2,000,000 tokens/h x 1000 = 0.0001 $/1k tokens
    assert derived_price(SPEC, "pooled", 0.25, 2_000_000) == pytest.approx(0.0001)
    book = PriceBook.from_spec(SPEC, gpu_shares={"pooled": 0.25}, tokens_per_hour={"pooled": 2_000_000})
    assert book.per_1k["pooled"] == pytest.approx(0.0001)


def test_llm_share_defaults_to_its_tensor_parallel_gpus():
    # 4.0 $/GPU-h x 2 GPUs / 1,000,000 tokens/h x 1000 = 0.008
    assert PriceBook.from_spec(SPEC, tokens_per_hour={"big": 1_000_000}).per_1k["big"] == pytest.approx(0.008)


@pytest.mark.parametrize(
    ("model", "share", "rate"),
    [("pooled", None, 1e6), ("pooled", 0.5, None), ("pooled", 0.5, 0), ("free", 1.0, 1e6)],
)
def test_unknown_prices_stay_unknown(model, share, rate):
    assert derived_price(SPEC, model, share, rate) is None
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
