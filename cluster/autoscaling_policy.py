"""Per-model autoscaling for LLM traffic: one pure decision, and the adapter Ray Serve 2.60 calls.

Why not Serve's default policy: it scales on ongoing requests alone, and it can take a model from one replica to zero
while a trickle of requests is still in flight. A small LLM also has a latency objective (time to first token or
queue wait) that load alone does not show. :func:`decide_replicas` reads both, steps down one replica at a time,
goes to zero only when fully idle, and wakes a model at zero as soon as anything waits for it (a request at zero is
demand, never shed).

How Serve 2.60 runs it (``ray/serve/autoscaling_policy.py``, ``_apply_autoscaling_config``): the policy is called
with an ``AutoscalingContext`` and returns ``(replicas, policy_state)``. Serve then applies ``upscale_delay_s``,
``downscale_delay_s`` and ``downscale_to_zero_delay_s`` itself (a decision must hold that long before it is
applied), wakes a deployment at zero without calling the policy at all, and clips to min/max. So the adapter hands
the pure function zero delays: the delays live in the Serve config, where they apply once.

Nothing here imports Ray: the module is imported by the planner, and cloudpickled by value into the Serve
controller from its import path (:data:`POLICY_FUNCTION`), where it must carry no heavy dependency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

POLICY_FUNCTION = "cluster.autoscaling_policy:serve_policy"
"""Import path of the policy in a Serve config. A function, not a class with ``policy_kwargs``: the policy is part of
a deployment's code version, so kwargs that change (a model's objective) would restart its engines. The objective
reaches the policy as a custom metric instead, from the replicas' live ``user_config``."""

WAIT_METRIC = "queue_wait_p90_s"
"""Custom metric a replica may return from ``record_autoscaling_stats()``: its recent queue wait or TTFT p90."""
OBJECTIVE_METRIC = "latency_objective_s"
"""Custom metric a replica may return: the model's latency objective, when the policy was given none."""
STATE_REASON_KEY = "slmfleet_reason"
"""Key of the last decision's reason in the policy state Serve keeps between calls."""

DOWNSCALE_HEADROOM = 0.8
"""One replica fewer must carry the load at no more than this fraction of the target (no flapping at the edge)."""
MAX_LATENCY_STEP = 2.0
"""A latency-triggered step at most doubles the replicas: the wait is a symptom, not a measure of how many."""
DEFAULT_TARGET_ONGOING = 2.0
"""Serve's own default ``target_ongoing_requests``."""

REASON_WAKE = "wake from zero: requests are waiting"
REASON_AT_ZERO = "idle at zero"
REASON_RAISE_TO_MIN = "below min_replicas"
REASON_CAP_TO_MAX = "above max_replicas"
REASON_LOAD = "load above target per replica"
REASON_LATENCY = "measured wait above the latency objective"
REASON_AT_MAX = "overloaded but at max_replicas"
REASON_UP_COOLDOWN = "overloaded, waiting out upscale_delay_s"
REASON_DOWN = "load fits in one replica fewer"
REASON_DOWN_COOLDOWN = "underloaded, waiting out downscale_delay_s"
REASON_IDLE_WAIT = "idle, waiting out the idle delay before zero"
REASON_TO_ZERO = "idle past the idle delay"
REASON_HOLD = "load within target"
REASON_STARTING = "replicas still starting: a start already paid for is not cut short"


@dataclass(frozen=True)
class ScalingSignals:
    """What one autoscaling decision for one model needs to know; plain numbers, no Ray types.

    ``current_replicas`` is the count the deployment is converging to (Serve's target), so a step is measured from
    what was already asked for. ``ongoing_requests`` is running plus queued at the replicas; ``queued_at_handles``
    is what waits in callers' handles, including every request waiting because there are zero replicas.
    ``starting_replicas`` are asked for but not yet serving: they cannot lower the measured wait yet, so the wait
    does not trigger another step until they are up. ``seconds_*`` default to "long ago".
    """

    current_replicas: int
    min_replicas: int
    max_replicas: int
    ongoing_requests: float
    queued_at_handles: float = 0.0
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING
    latency_objective_s: float | None = None
    measured_wait_s: float | None = None
    starting_replicas: int = 0
    seconds_since_scale_up: float = math.inf
    seconds_since_scale_down: float = math.inf
    seconds_idle: float = math.inf
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 0.0
    idle_delay_s: float = 0.0

    def __post_init__(self) -> None:
        """Reject impossible inputs here, naming the field, rather than deciding on them."""
        for name in ("current_replicas", "min_replicas", "ongoing_requests", "queued_at_handles", "starting_replicas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("upscale_delay_s", "downscale_delay_s", "idle_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests!r}")
        if self.latency_objective_s is not None and self.latency_objective_s <= 0:
            raise ValueError(f"latency_objective_s must be > 0, got {self.latency_objective_s!r}")

    @property
    def demand(self) -> float:
        """Every request that wants a replica: at the replicas and waiting in handles."""
        return self.ongoing_requests + self.queued_at_handles


@dataclass(frozen=True)
class ScalingDecision:
    """The replica count to ask for and why, in a few words (logged and kept in Serve's policy state)."""

    replicas: int
    reason: str


def decide_replicas(signals: ScalingSignals) -> ScalingDecision:
    """Desired replicas for one model; pure, so it is tested and simulated without Ray.

    Order: wake from zero on any demand; hold the bounds; step up (proportionally to load, or by the measured wait
    over the objective, at most to max); step down one replica at a time, only after the downscale delay and when
    one replica fewer keeps headroom, and never while replicas are still starting; from one replica to zero only
    with nothing ongoing or queued for the idle delay. Never below min nor above max (max wins over waking when a
    capacity cut makes it 0).
    """
    current = signals.current_replicas
    if current == 0:
        return _from_zero(signals)
    if current < signals.min_replicas:
        return ScalingDecision(signals.min_replicas, REASON_RAISE_TO_MIN)
    if current > signals.max_replicas:
        return ScalingDecision(signals.max_replicas, REASON_CAP_TO_MAX)
    return _scale_up(signals) or _scale_down(signals) or ScalingDecision(current, REASON_HOLD)


def _from_zero(signals: ScalingSignals) -> ScalingDecision:
    """Any waiting request wakes the model, to as many replicas as the load needs; no delay applies."""
    if signals.demand > 0 and signals.max_replicas > 0:
        wanted = max(1, signals.min_replicas, _replicas_for_load(signals))
        return ScalingDecision(min(wanted, signals.max_replicas), REASON_WAKE)
    if signals.min_replicas > 0:
        return ScalingDecision(signals.min_replicas, REASON_RAISE_TO_MIN)
    return ScalingDecision(0, REASON_AT_ZERO)


def _replicas_for_load(signals: ScalingSignals) -> int:
    """Replicas that carry the demand at the target per replica."""
    return math.ceil(signals.demand / signals.target_ongoing_requests)


def _wait_over_objective(signals: ScalingSignals) -> float | None:
    """Measured wait / objective, or None when either is unknown or nothing is waiting (the wait is then stale)."""
    objective, wait = signals.latency_objective_s, signals.measured_wait_s
    if objective is None or wait is None or signals.demand <= 0:
        return None
    return wait / objective


def _replicas_for_latency(signals: ScalingSignals) -> int:
    """Replicas the measured wait asks for: proportional to wait/objective, at least one more, at most double.

    0 (no ask) when the wait is unknown, stale or within the objective, or while replicas are still starting.
    """
    ratio = _wait_over_objective(signals)
    if ratio is None or ratio <= 1 or signals.starting_replicas > 0:
        return 0
    return max(signals.current_replicas + 1, math.ceil(signals.current_replicas * min(ratio, MAX_LATENCY_STEP)))


def _scale_up(signals: ScalingSignals) -> ScalingDecision | None:
    """A step up when load per replica or the measured wait is over its target; None when neither is."""
    current = signals.current_replicas
    by_load, by_latency = _replicas_for_load(signals), _replicas_for_latency(signals)
    wanted = max(by_load, by_latency)
    if wanted <= current:
        return None
    if current >= signals.max_replicas:
        return ScalingDecision(current, REASON_AT_MAX)
    if signals.seconds_since_scale_up < signals.upscale_delay_s:
        return ScalingDecision(current, REASON_UP_COOLDOWN)
    reason = REASON_LOAD if by_load >= by_latency else REASON_LATENCY
    return ScalingDecision(min(wanted, signals.max_replicas), reason)


def _latency_near_objective(signals: ScalingSignals) -> bool:
    """Whether the measured wait is too close to the objective to give a replica away."""
    ratio = _wait_over_objective(signals)
    return ratio is not None and ratio > DOWNSCALE_HEADROOM


def _scale_down(signals: ScalingSignals) -> ScalingDecision | None:
    """One replica fewer when the rest carry the load with headroom, after the delay; None when not wanted."""
    current = signals.current_replicas
    if current <= signals.min_replicas:
        return None
    if signals.starting_replicas > 0:
        return _hold_while_starting(signals)
    if current == 1:
        return _to_zero(signals)
    fits = signals.demand <= (current - 1) * signals.target_ongoing_requests * DOWNSCALE_HEADROOM
    if not fits or _latency_near_objective(signals):
        return None
    if min(signals.seconds_since_scale_up, signals.seconds_since_scale_down) < signals.downscale_delay_s:
        return ScalingDecision(current, REASON_DOWN_COOLDOWN)
    return ScalingDecision(current - 1, REASON_DOWN)


def _hold_while_starting(signals: ScalingSignals) -> ScalingDecision:
    """No step down while replicas start: Serve stops starting replicas first, so the step would throw away a cold
    start (tens of seconds for a small model, minutes for a large one) that was asked for because requests waited.
    Serve 2.60 was seen losing the handle-side count of a request queued at zero replicas about 40 s into a wake,
    then stopping the replica mid-start; with this rule a wake always finishes, and the idle delay counts from
    when the replica serves."""
    return ScalingDecision(signals.current_replicas, REASON_STARTING)


def _to_zero(signals: ScalingSignals) -> ScalingDecision | None:
    """From one replica to zero only with nothing ongoing or queued, for the whole idle delay."""
    if signals.demand > 0:
        return None
    if signals.seconds_idle < signals.idle_delay_s:
        return ScalingDecision(1, REASON_IDLE_WAIT)
    return ScalingDecision(0, REASON_TO_ZERO)


# --- Ray Serve 2.60 adapter: duck-typed on ray.serve.config.AutoscalingContext, no Ray import --------------------


def signals_from_context(
    ctx: Any, latency_objective_s: float | None = None, wait_metric: str = WAIT_METRIC
) -> ScalingSignals:
    """Read Serve's ``AutoscalingContext`` into :class:`ScalingSignals`.

    ``total_num_requests`` counts running requests at replicas plus requests queued at handles, so the replicas'
    share is the difference. Delays are passed as 0 because Serve applies its configured delays to whatever the
    policy returns; applying them here too would double them.
    """
    total = _number(getattr(ctx, "total_num_requests", 0.0))
    queued = min(total, _number(getattr(ctx, "total_queued_requests", 0.0)))
    running = int(getattr(ctx, "current_num_replicas", 0) or 0)
    target = int(getattr(ctx, "target_num_replicas", running) or 0)
    low, high = _bounds(ctx)
    metrics = getattr(ctx, "aggregated_metrics", None) or {}
    return ScalingSignals(
        current_replicas=target,
        min_replicas=low,
        max_replicas=max(low, high),
        ongoing_requests=total - queued,
        queued_at_handles=queued,
        target_ongoing_requests=_target_ongoing(getattr(ctx, "config", None)),
        latency_objective_s=latency_objective_s or _positive(_metric_values(metrics, OBJECTIVE_METRIC), min),
        measured_wait_s=_positive(_metric_values(metrics, wait_metric), _mean),
        starting_replicas=max(0, target - running),
        seconds_since_scale_up=_seconds_since(ctx, "last_scale_up_time"),
        seconds_since_scale_down=_seconds_since(ctx, "last_scale_down_time"),
    )


def serve_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Serve 2.60 custom autoscaling policy: ``policy_function: "cluster.autoscaling_policy:serve_policy"``.

    The latency objective comes from the replicas' ``latency_objective_s`` custom metric (the model's
    ``user_config``), so editing it is live; the reason goes into the policy state Serve hands back next tick.
    """
    decision = decide_replicas(signals_from_context(ctx))
    return decision.replicas, {STATE_REASON_KEY: decision.reason}


def policy_config() -> dict[str, Any]:
    """The ``autoscaling_config.policy`` entry that names this policy in a Serve config or deployment options."""
    return {"policy_function": POLICY_FUNCTION}


def serve_autoscaling_config(
    *,
    min_replicas: int,
    max_replicas: int,
    target_ongoing_requests: float,
    upscale_delay_s: float = 10.0,
    downscale_delay_s: float = 120.0,
    idle_delay_s: float = 300.0,
) -> dict[str, Any]:
    """A model deployment's whole ``autoscaling_config`` with this policy; Serve applies the delays to it.

    ``initial_replicas`` is ``min_replicas``, so a scale-to-zero model starts at zero and wakes on first use.
    """
    return {
        "min_replicas": min_replicas,
        "initial_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
        "upscale_delay_s": upscale_delay_s,
        "downscale_delay_s": downscale_delay_s,
        "downscale_to_zero_delay_s": idle_delay_s,
        "policy": policy_config(),
    }


def _number(value: Any) -> float:
    """A non-negative float from a context field that may be None (Serve types queued requests Optional)."""
    return max(0.0, float(value)) if value is not None else 0.0


def _bounds(ctx: Any) -> tuple[int, int]:
    """Capacity-adjusted min/max (Serve scales them by ``target_capacity``), else the config's own."""
    config = getattr(ctx, "config", None)
    low = getattr(ctx, "capacity_adjusted_min_replicas", None)
    high = getattr(ctx, "capacity_adjusted_max_replicas", None)
    low = low if low is not None else getattr(config, "min_replicas", 0)
    high = high if high is not None else getattr(config, "max_replicas", max(low, 1))
    return int(low), int(high)


def _target_ongoing(config: Any) -> float:
    """The config's ``target_ongoing_requests``, or Serve's default when unset."""
    value = getattr(config, "target_ongoing_requests", None)
    return float(value) if value else DEFAULT_TARGET_ONGOING


def _metric_values(metrics: Mapping[str, Any], name: str) -> list[float]:
    """One custom metric's per-replica values (``aggregated_metrics[name][replica_id]``)."""
    per_replica = metrics.get(name) or {}
    return [float(value) for value in per_replica.values() if value is not None]


def _positive(values: list[float], combine: Callable[[list[float]], float]) -> float | None:
    """Combine the positive values, or None when no replica reported one."""
    kept = [value for value in values if value > 0 and math.isfinite(value)]
    return combine(kept) if kept else None


def _mean(values: list[float]) -> float:
    """Mean across replicas: the router balances load, so one slow replica should not scale the model alone."""
    return sum(values) / len(values)


def _seconds_since(ctx: Any, field: str) -> float:
    """Seconds since a scale event Serve timestamped, or infinity when it never happened."""
    then, now = getattr(ctx, field, None), getattr(ctx, "current_time", None)
    if then is None or now is None:
        return math.inf
    return max(0.0, float(now) - float(then))
