"""The LLM-tier budget: how many capacity escalations (a small model overloaded or waking) each LLM-tier model
takes per minute, counted across every router replica in the shared store.

Escalating a contract failure buys quality and is rare; escalating an overloaded small model moves a burst onto
the fleet's scarcest GPUs, and one burst could swamp them. So capacity escalations draw from a windowed budget per
target model (``models.<llm>.capacity_escalations_per_min``); once it is spent, the step is refused at once (503
with ``Retry-After`` when the window frees) like any overloaded call. A shared store that does not answer lets the
escalation through (logged): the budget guards the LLM pool, it must not fail requests on its own account.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from cluster.spec import FleetSpec
from deployments.fleet_state_core import Consumed

log = logging.getLogger(__name__)
NAMESPACE = "llm_budget"
WINDOW_S = 60.0

Consume = Callable[[str, str, float, float, float], Awaitable[Consumed]]
"""``consume(ns, key, amount, limit, window_s)``: the shared store's atomic windowed counter."""


class EscalationBudget:
    """Per-model limits over a shared counter; :meth:`take` answers None (allowed) or the seconds to wait."""

    def __init__(self, limits: Mapping[str, int], consume: Consume | None) -> None:
        self.limits = dict(limits)
        self._consume = consume

    async def take(self, target: str) -> int | None:
        """Spend one capacity escalation to ``target``: None when allowed, else whole seconds until there is room."""
        limit = self.limits.get(target)
        if limit is None or self._consume is None:
            return None
        try:
            taken = await self._consume(NAMESPACE, target, 1, limit, WINDOW_S)
        except Exception as exc:
            log.warning("LLM-tier budget for %s unreadable, escalation let through: %r", target, exc)
            return None
        return None if taken.allowed else max(1, math.ceil(taken.retry_after_s))

    def refusal(self, source: str, target: str) -> str:
        """Why a capacity escalation from ``source`` to ``target`` was refused."""
        return (
            f"model '{source}' is at capacity and the LLM tier's budget for capacity escalations to '{target}' "
            f"({self.limits.get(target)} a minute) is spent"
        )


def budget_from_spec(spec: FleetSpec, consume: Consume | None) -> EscalationBudget:
    """Limits of the LLM-tier models (the only escalation targets)."""
    limits = {name: m.capacity_escalations_per_min for name, m in spec.models.items() if m.tier == "llm"}
    return EscalationBudget(limits, consume)
