"""What a response cost, and what the same tokens would have cost on the LLM tier: pure functions over the spec.

A model's price per 1k tokens (prompt and completion tokens priced alike) is, in order:

1. its declared ``price_per_1k_tokens``;
2. derived: ``replica_price_per_hour / tokens_per_hour x 1000``. A replica's hourly price is its pool's
   ``price_per_gpu_hour`` times the GPUs the placement plan gives one replica (its share of a card, or its
   tensor-parallel GPUs), see :func:`replica_hourly_prices`. ``tokens_per_hour`` is the measured throughput of
   one replica: each model replica reports its own with every answer and the router's book takes it in
   (:meth:`PriceBook.observe_throughput`), so the price follows what the GPUs really deliver;
3. unknown (None): costs that need it are None too rather than a made-up zero.

The counterfactual prices a response's accepted calls as if every token had gone to the LLM tier; the ratio
``cost / counterfactual`` is the fraction of the LLM bill actually paid (0.05 = 5%).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.placement import Plan
    from cluster.spec import FleetSpec


@dataclass
class PriceBook:
    """Price per 1k tokens by model name; None where nothing declares or derives one.

    Built from a spec, the book also re-derives undeclared prices as measured throughput comes in; the router
    shares one book between its responses, its pipelines and its metrics, so all see the same price.
    """

    per_1k: dict[str, float | None] = field(default_factory=dict)
    spec: FleetSpec | None = None
    replica_per_hour: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_spec(
        cls,
        spec: FleetSpec,
        *,
        replica_per_hour: Mapping[str, float] | None = None,
        tokens_per_hour: Mapping[str, float] | None = None,
    ) -> PriceBook:
        hourly = dict(replica_per_hour or {})
        rates = tokens_per_hour or {}
        prices = {name: model_price(spec, name, hourly.get(name), rates.get(name)) for name in spec.models}
        return cls(prices, spec, hourly)

    def cost(self, model: str, tokens: int) -> float | None:
        """Price of ``tokens`` (prompt + completion) on ``model``."""
        price = self.per_1k.get(model)
        return None if price is None else price * tokens / 1000

    def observe_throughput(self, model: str, tokens_per_hour: float | None) -> None:
        """A replica's measured throughput: re-derive the model's price unless the spec declares one."""
        if self.spec is None or model not in self.spec.models:
            return
        if self.spec.models[model].price_per_1k_tokens is not None:
            return
        price = derived_price(self.replica_per_hour.get(model), tokens_per_hour)
        if price is not None:
            self.per_1k[model] = price


def replica_hourly_prices(spec: FleetSpec, plan: Plan) -> dict[str, float]:
    """What one replica of each GPU-placed model costs per hour: its pool's GPU-hour price x its GPUs.

    Models on CPU placements, or on pools without a price, are absent (their derived price stays unknown).
    """
    prices = {}
    for placement in plan.models:
        pool = spec.pools.get(placement.pool)
        if placement.kind in ("fraction", "whole") and pool is not None and pool.price_per_gpu_hour is not None:
            prices[placement.model] = pool.price_per_gpu_hour * placement.gpus_per_replica
    return prices


def model_price(
    spec: FleetSpec, model: str, replica_per_hour: float | None = None, tokens_per_hour: float | None = None
) -> float | None:
    """Declared price, else the derived one, else None."""
    declared = spec.models[model].price_per_1k_tokens
    if declared is not None:
        return declared
    return derived_price(replica_per_hour, tokens_per_hour)


def derived_price(replica_per_hour: float | None, tokens_per_hour: float | None) -> float | None:
    """Price per 1k tokens of a replica that costs ``replica_per_hour`` and serves ``tokens_per_hour``."""
    if replica_per_hour is None or not tokens_per_hour or tokens_per_hour <= 0:
        return None
    return replica_per_hour / tokens_per_hour * 1000


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
