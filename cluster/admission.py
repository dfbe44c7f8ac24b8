"""Admission by deadline: whether a model replica takes a request, from the work queued ahead of it.

A count bound (``max_queued_requests``) admits as many short requests as long ones and knows nothing of how fast
the replica decodes, so admitted requests can wait many times their objective. Here a request is admitted only
while its expected wait fits its budget: the decode work waiting ahead of it (each waiting request weighted by the
tokens it may decode: its ``max_tokens``, capped by what this model's answers really run to) over the replica's
measured decode rate. Beyond it the answer is an immediate refusal with the time the queue needs to drain, which
becomes ``Retry-After``. The count bound stays as a hard ceiling.

A pure function of its inputs (no Ray, no vLLM): the replica measures (``deployments/model/decode_rate.py``,
``deployments/model/batch_slots.py``) and asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_QUEUE_OBJECTIVE_S = 10.0
"""A model's queue-wait budget when neither the spec nor the request sets one."""
MIN_RETRY_AFTER_S = 1


def model_objective_s(declared: float | None) -> float:
    """A model's queue-wait objective: its spec's ``latency_objective_s``, else :data:`DEFAULT_QUEUE_OBJECTIVE_S`."""
    return declared or DEFAULT_QUEUE_OBJECTIVE_S


PRIORITY_SHARE = {"high": 1.0, "normal": 0.8, "low": 0.5}
"""The share of the queue-wait budget each priority class may use: as a queue grows, low requests are refused
first, then normal ones; high ones wait up to the whole objective."""


@dataclass(frozen=True)
class Admission:
    """Admit, or refuse with why and when to come back (whole seconds, for ``Retry-After``)."""

    admitted: bool
    expected_wait_s: float | None = None
    reason: str = ""
    retry_after_s: int = 0


def tighter(budget_s: float | None, other_s: float | None) -> float | None:
    """The smaller of two optional time budgets (None: no budget)."""
    return budget_s if other_s is None else other_s if budget_s is None else min(budget_s, other_s)


def queue_budget(objective_s: float, priority: str, caller_budget_s: float | None) -> float:
    """How long a request may wait for a batch slot: its priority class's share of the model's objective, or the
    caller's own budget (a specialist's objective, a pipeline's time left) when that is smaller."""
    share = objective_s * PRIORITY_SHARE.get(priority, PRIORITY_SHARE["normal"])
    return share if caller_budget_s is None else min(share, caller_budget_s)


def decide_admission(
    *,
    work_ahead_tokens: float,
    decode_rate_tokens_per_s: float | None,
    waiting: int,
    max_waiting: int,
    budget_s: float,
) -> Admission:
    """Admit a request when its expected wait (work ahead / rate) fits ``budget_s`` and the count bound holds.

    ``decode_rate_tokens_per_s`` is None until measured; then only the count bound decides (a fresh replica has no
    history to judge by, and its first requests are what measure it).
    """
    expected = None if not decode_rate_tokens_per_s else work_ahead_tokens / decode_rate_tokens_per_s
    drain_s = expected if expected is not None else 0.0
    if waiting >= max_waiting:
        reason = f"{waiting} requests already wait for this replica (max_queued_requests {max_waiting})"
        return Admission(False, expected, reason, _retry_after(drain_s))
    if expected is not None and expected > budget_s:
        reason = f"expected wait {expected:.1f} s is over the {budget_s:g} s objective"
        return Admission(False, expected, reason, _retry_after(expected - budget_s))
    return Admission(True, expected)


def _retry_after(seconds: float) -> int:
    return max(MIN_RETRY_AFTER_S, math.ceil(seconds))
