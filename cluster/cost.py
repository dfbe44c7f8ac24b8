"""What a response cost, and what the same tokens would have cost on the LLM tier: pure functions over the spec.

A model's price per 1k tokens (prompt and completion tokens priced alike) is, in order:

1. its declared ``price_per_1k_tokens``;
2. derived: ``pool.price_per_gpu_hour x gpu_share / tokens_per_hour x 1000``, where ``gpu_share`` is the model's
   share of GPUs per replica (from the placement plan; an llm-tier model defaults to ``tensor_parallel`` or 1
   whole GPU) and ``tokens_per_hour`` is measured throughput of one replica, fed in by whoever measures it;
3. unknown (None): costs that need it are None too rather than a made-up zero.

The counterfactual prices a response's accepted calls as if every token had gone to the LLM tier; the ratio
``cost / counterfactual`` is the fraction of the LLM bill actually paid (0.05 = 5%).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.spec import FleetSpec


@dataclass(frozen=True)
class PriceBook:
    """Price per 1k tokens by model name; None where nothing declares or derives one."""

    per_1k: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_spec(
        cls,
        spec: FleetSpec,
        *,
        gpu_shares: Mapping[str, float] | None = None,
        tokens_per_hour: Mapping[str, float] | None = None,
    ) -> PriceBook:
        shares = gpu_shares or {}
        rates = tokens_per_hour or {}
        return cls({name: model_price(spec, name, shares.get(name), rates.get(name)) for name in spec.models})

    def cost(self, model: str, tokens: int) -> float | None:
        """Price of ``tokens`` (prompt + completion) on ``model``."""
        price = self.per_1k.get(model)
        return None if price is None else price * tokens / 1000


def model_price(
    spec: FleetSpec, model: str, gpu_share: float | None = None, tokens_per_hour: float | None = None
) -> float | None:
    """Declared price, else the pool-derived one, else None."""
    declared = spec.models[model].price_per_1k_tokens
    if declared is not None:
        return declared
    return derived_price(spec, model, gpu_share, tokens_per_hour)


def derived_price(spec: FleetSpec, model: str, gpu_share: float | None, tokens_per_hour: float | None) -> float | None:
    """Price per 1k tokens from the pool's GPU-hour price, the model's GPU share and its measured throughput."""
    m = spec.models[model]
    pool = spec.pools.get(m.pool) if m.pool else None
    if pool is None or pool.price_per_gpu_hour is None or not tokens_per_hour or tokens_per_hour <= 0:
        return None
    share = gpu_share if gpu_share is not None else _default_share(spec, model)
    if share is None:
        return None
    return pool.price_per_gpu_hour * share / tokens_per_hour * 1000


def _default_share(spec: FleetSpec, model: str) -> float | None:
    m = spec.models[model]
    return float(m.tensor_parallel or 1) if m.tier == "llm" else None


def llm_reference_model(spec: FleetSpec, preferred: str | None = None) -> str | None:
    """The LLM the counterfactual is priced on: the escalation target when given, else the first llm-tier model."""
    if preferred is not None and preferred in spec.models:
        return preferred
    return next((name for name, m in spec.models.items() if m.tier == "llm"), None)


def sum_costs(costs: Iterable[float | None]) -> float | None:
    """Total of known costs; None when any part is unknown (a partial total would understate the bill)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def cost_ratio(cost: float | None, counterfactual: float | None) -> float | None:
    """Fraction of the LLM-tier bill actually paid; None when either side is unknown or the LLM side is 0."""
    if cost is None or not counterfactual:
        return None
    return cost / counterfactual


@dataclass(frozen=True)
class CostSummary:
    """Per-response totals as reported to clients."""

    total: float | None
    llm_counterfactual: float | None
    ratio: float | None
    llm_model: str | None

    @classmethod
    def of(
        cls, costs: Iterable[float | None], counterfactuals: Iterable[float | None], llm_model: str | None
    ) -> CostSummary:
        total = sum_costs(costs)
        counterfactual = sum_costs(counterfactuals)
        return cls(total, counterfactual, cost_ratio(total, counterfactual), llm_model)
