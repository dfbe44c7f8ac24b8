"""Autoscaling policy: the pure decision as tables and properties, then the adapter against Ray Serve 2.60's own
context, config and wrapper classes (built directly; no Ray cluster is started)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import autoscaling_policy as ap
from cluster.autoscaling_policy import (
    OBJECTIVE_METRIC,
    POLICY_FUNCTION,
    STATE_REASON_KEY,
    WAIT_METRIC,
    ScalingDecision,
    ScalingSignals,
    decide_replicas,
    policy_config,
    serve_autoscaling_config,
    serve_policy,
    signals_from_context,
)

ROOT = Path(__file__).resolve().parents[2]


SHORT = {
    "cur": "current_replicas",
    "lo": "min_replicas",
    "hi": "max_replicas",
    "ongoing": "ongoing_requests",
    "queued": "queued_at_handles",
    "objective": "latency_objective_s",
    "wait": "measured_wait_s",
    "starting": "starting_replicas",
    "since_up": "seconds_since_scale_up",
    "since_down": "seconds_since_scale_down",
    "idle": "seconds_idle",
    "up_delay": "upscale_delay_s",
    "down_delay": "downscale_delay_s",
    "idle_delay": "idle_delay_s",
}


def sig(**kw: Any) -> ScalingSignals:
    """Signals with a 1..8 model at target 2 unless a test says otherwise; the tables use the short names."""
    base: dict[str, Any] = {"current_replicas": 2, "min_replicas": 1, "max_replicas": 8, "ongoing_requests": 0.0}
    return ScalingSignals(**{**base, **{SHORT.get(key, key): value for key, value in kw.items()}})


# --- decisions as tables ------------------------------------------------------------------------------------------

SCALE_UP = [
    ("proportional to load", {"ongoing": 12.0}, 6, ap.REASON_LOAD),
    ("handle queue counts as load", {"ongoing": 4.0, "queued": 6.0}, 5, ap.REASON_LOAD),
    ("bounded by max", {"ongoing": 40.0}, 8, ap.REASON_LOAD),
    ("at max holds", {"cur": 8, "ongoing": 40.0}, 8, ap.REASON_AT_MAX),
    ("wait over objective", {"ongoing": 3.0, "objective": 1.0, "wait": 1.5}, 3, ap.REASON_LATENCY),
    ("wait step at most doubles", {"ongoing": 1, "objective": 1.0, "wait": 10.0}, 4, ap.REASON_LATENCY),
    ("wait step at least one", {"cur": 1, "ongoing": 1, "objective": 1.0, "wait": 1.01}, 2, ap.REASON_LATENCY),
    ("larger of load and wait", {"ongoing": 16.0, "objective": 1.0, "wait": 2.0}, 8, ap.REASON_LOAD),
    ("wait ignored while starting", {"ongoing": 1, "objective": 1, "wait": 5, "starting": 1}, 2, ap.REASON_STARTING),
    ("a wait with nothing waiting is stale", {"ongoing": 0, "objective": 1, "wait": 5}, 1, ap.REASON_DOWN),
    ("unknown wait is no signal", {"ongoing": 3.0, "objective": 1.0}, 2, ap.REASON_HOLD),
    ("upscale cooldown", {"ongoing": 12.0, "since_up": 5.0, "up_delay": 30.0}, 2, ap.REASON_UP_COOLDOWN),
    ("cooldown over", {"ongoing": 12.0, "since_up": 30.0, "up_delay": 30.0}, 6, ap.REASON_LOAD),
]  # fmt: skip

SCALE_DOWN = [
    ("one step when it fits with headroom", {"cur": 4, "ongoing": 2.0}, 3, ap.REASON_DOWN),
    ("one step even when idle", {"cur": 4, "lo": 0}, 3, ap.REASON_DOWN),
    ("no step without headroom", {"cur": 4, "ongoing": 6.5}, 4, ap.REASON_HOLD),
    ("wait near objective: no step", {"cur": 4, "ongoing": 1, "objective": 1, "wait": 0.9}, 4, ap.REASON_HOLD),
    ("wait well inside objective", {"cur": 4, "ongoing": 1, "objective": 1, "wait": 0.5}, 3, ap.REASON_DOWN),
    ("delay after a scale-down", {"cur": 4, "since_down": 10, "down_delay": 60}, 4, ap.REASON_DOWN_COOLDOWN),
    ("delay after a scale-up", {"cur": 4, "since_up": 10, "down_delay": 60}, 4, ap.REASON_DOWN_COOLDOWN),
    ("delay over", {"cur": 4, "since_down": 60.0, "down_delay": 60.0}, 3, ap.REASON_DOWN),
    ("never below min", {"cur": 2, "lo": 2}, 2, ap.REASON_HOLD),
    ("no step while replicas start", {"cur": 4, "starting": 1}, 4, ap.REASON_STARTING),
]  # fmt: skip

ZERO = [
    ("idle one waits out the delay", {"cur": 1, "lo": 0, "idle": 30, "idle_delay": 300}, 1, ap.REASON_IDLE_WAIT),
    ("idle one past the delay", {"cur": 1, "lo": 0, "idle": 300, "idle_delay": 300}, 0, ap.REASON_TO_ZERO),
    ("anything in flight keeps one", {"cur": 1, "lo": 0, "ongoing": 0.25}, 1, ap.REASON_HOLD),
    ("anything queued keeps one", {"cur": 1, "lo": 0, "queued": 1.0}, 1, ap.REASON_HOLD),
    ("min 1 never goes to zero", {"cur": 1, "lo": 1}, 1, ap.REASON_HOLD),
    ("a wake whose demand lapsed still finishes", {"cur": 1, "lo": 0, "starting": 1}, 1, ap.REASON_STARTING),
    ("queued request wakes", {"cur": 0, "lo": 0, "queued": 1.0}, 1, ap.REASON_WAKE),
    ("fractional demand wakes", {"cur": 0, "lo": 0, "queued": 0.1}, 1, ap.REASON_WAKE),
    ("wake is proportional", {"cur": 0, "lo": 0, "queued": 9.0}, 5, ap.REASON_WAKE),
    ("wake bounded by max", {"cur": 0, "lo": 0, "hi": 3, "queued": 9.0}, 3, ap.REASON_WAKE),
    ("wake ignores upscale delay", {"cur": 0, "lo": 0, "queued": 1, "since_up": 0, "up_delay": 60}, 1, ap.REASON_WAKE),
    ("idle at zero stays", {"cur": 0, "lo": 0}, 0, ap.REASON_AT_ZERO),
    ("a capacity cut to zero wins over waking", {"cur": 0, "lo": 0, "hi": 0, "queued": 3.0}, 0, ap.REASON_AT_ZERO),
]  # fmt: skip

BOUNDS = [
    ("zero below min is raised", {"cur": 0, "lo": 2}, 2, ap.REASON_RAISE_TO_MIN),
    ("below min is raised", {"cur": 1, "lo": 2}, 2, ap.REASON_RAISE_TO_MIN),
    ("above max is capped", {"cur": 6, "hi": 4}, 4, ap.REASON_CAP_TO_MAX),
    ("within target holds", {"cur": 3, "ongoing": 5.0}, 3, ap.REASON_HOLD),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "replicas", "reason"),
    [case[1:] for case in SCALE_UP + SCALE_DOWN + ZERO + BOUNDS],
    ids=[case[0] for case in SCALE_UP + SCALE_DOWN + ZERO + BOUNDS],
)
def test_decision_table(fields: dict[str, Any], replicas: int, reason: str) -> None:
    assert decide_replicas(sig(**fields)) == ScalingDecision(replicas, reason)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_replicas": 1, "min_replicas": 2}, "max_replicas"),
        ({"current_replicas": -1}, "current_replicas"),
        ({"queued_at_handles": -0.5}, "queued_at_handles"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"latency_objective_s": 0}, "latency_objective_s"),
        ({"idle_delay_s": -1}, "idle_delay_s"),
    ],
)
def test_impossible_signals_name_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        sig(**fields)


# --- properties ---------------------------------------------------------------------------------------------------

seconds = st.one_of(st.floats(0, 2000, allow_nan=False), st.just(math.inf))
maybe_s = st.one_of(st.none(), st.floats(0.01, 30, allow_nan=False))


@st.composite
def any_signals(draw: st.DrawFn) -> ScalingSignals:
    low = draw(st.integers(0, 6))
    high = draw(st.integers(max(low, 0), 12))
    current = draw(st.integers(0, 16))
    return ScalingSignals(
        current_replicas=current,
        min_replicas=low,
        max_replicas=high,
        ongoing_requests=draw(st.one_of(st.just(0.0), st.floats(0, 200, allow_nan=False))),
        queued_at_handles=draw(st.one_of(st.just(0.0), st.floats(0, 50, allow_nan=False))),
        target_ongoing_requests=draw(st.floats(0.25, 32, allow_nan=False)),
        latency_objective_s=draw(maybe_s),
        measured_wait_s=draw(maybe_s),
        starting_replicas=draw(st.integers(0, current)),
        seconds_since_scale_up=draw(seconds),
        seconds_since_scale_down=draw(seconds),
        seconds_idle=draw(seconds),
        upscale_delay_s=draw(st.floats(0, 600, allow_nan=False)),
        downscale_delay_s=draw(st.floats(0, 600, allow_nan=False)),
        idle_delay_s=draw(st.floats(0, 600, allow_nan=False)),
    )


@settings(max_examples=500, deadline=None)
@given(any_signals())
def test_decision_stays_within_bounds_and_wakes_on_demand(s: ScalingSignals) -> None:
    replicas = decide_replicas(s).replicas
    assert s.min_replicas <= replicas <= s.max_replicas
    if s.current_replicas == 0 and s.queued_at_handles > 0 and s.max_replicas >= 1:
        assert replicas >= 1
    if s.demand > 0 and s.max_replicas >= 1:
        assert replicas >= 1, "a request was shed: demand with zero replicas asked for"


@settings(max_examples=500, deadline=None)
@given(any_signals())
def test_never_drops_more_than_one_replica_from_within_bounds(s: ScalingSignals) -> None:
    if s.min_replicas <= s.current_replicas <= s.max_replicas:
        assert decide_replicas(s).replicas >= s.current_replicas - 1


@settings(max_examples=300, deadline=None)
@given(any_signals())
def test_no_load_past_the_idle_delay_reaches_zero(s: ScalingSignals) -> None:
    idle = replace(s, min_replicas=0, ongoing_requests=0.0, queued_at_handles=0.0, seconds_idle=s.idle_delay_s,
                   starting_replicas=0)  # fmt: skip
    if idle.current_replicas <= 1:
        assert decide_replicas(idle).replicas == 0
    # From anywhere, with the delays over, it walks down one replica per decision and ends at zero.
    walk = replace(idle, current_replicas=min(idle.current_replicas, idle.max_replicas), measured_wait_s=None,
                   seconds_since_scale_up=math.inf, seconds_since_scale_down=math.inf)  # fmt: skip
    for expected in range(walk.current_replicas - 1, -1, -1):
        walk = replace(walk, current_replicas=decide_replicas(walk).replicas)
        assert walk.current_replicas == expected


# --- the Ray Serve 2.60 adapter -----------------------------------------------------------------------------------


def ray_context(config: Any, *, running: int, target: int | None = None, total: float = 0.0, queued: float = 0.0,
                metrics: dict[str, dict[Any, float]] | None = None, state: dict[str, Any] | None = None,
                now: float = 1000.0, last_up: float | None = None) -> Any:  # fmt: skip
    """Ray's own AutoscalingContext, filled the way the controller fills it (lazy callables for the metrics)."""
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingContext

    dep = DeploymentID(name="model-smol", app_name="model-smol")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(running)]
    by_replica = {name: dict(zip(replicas, values.values(), strict=False)) for name, values in (metrics or {}).items()}
    return AutoscalingContext(
        deployment_id=dep,
        deployment_name=dep.name,
        app_name=dep.app_name,
        current_num_replicas=running,
        target_num_replicas=running if target is None else target,
        running_replicas=replicas,
        total_num_requests=lambda: total,
        total_queued_requests=lambda: queued,
        aggregated_metrics=lambda: by_replica,
        raw_metrics=dict,
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=dict(state or {}),
        last_scale_up_time=last_up,
        last_scale_down_time=None,
        current_time=now,
        config=config,
    )


def ray_config(**overrides: Any) -> Any:
    from ray.serve.config import AutoscalingConfig

    fields = serve_autoscaling_config(min_replicas=0, max_replicas=4, target_ongoing_requests=2.0)
    return AutoscalingConfig(**{**fields, **overrides})


def test_import_pulls_in_no_ray_vllm_or_torch() -> None:
    code = (
        "import sys, cluster.autoscaling_policy; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rendered_config_is_valid_for_serve_and_names_the_function() -> None:
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.schema import DeploymentSchema

    fields = serve_autoscaling_config(min_replicas=0, max_replicas=3, target_ongoing_requests=4.0)
    DeploymentSchema(name="model-smol", autoscaling_config=fields)  # what `serve deploy` validates in a config file
    config = DeploymentConfig(autoscaling_config=fields).autoscaling_config  # what the controller builds from it
    assert config.policy.policy_function == POLICY_FUNCTION
    assert config.downscale_to_zero_delay_s == fields["downscale_to_zero_delay_s"]
    # The controller's path: proto round trip, then the deserialized function decides from a context.
    restored = DeploymentConfig.from_proto_bytes(DeploymentConfig(autoscaling_config=fields).to_proto_bytes())
    decide = restored.autoscaling_config.policy.get_policy()
    ctx = ray_context(restored.autoscaling_config, running=1, total=9.0, queued=1.0)
    assert decide(ctx) == (3, {STATE_REASON_KEY: ap.REASON_LOAD})


BLOCKED_LOAD = """
import importlib.abc, sys, types
import cloudpickle

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "cluster":
            raise ImportError(name)

sys.meta_path.insert(0, Block())
policy = cloudpickle.loads(sys.stdin.buffer.read())
ctx = types.SimpleNamespace(current_num_replicas=1, target_num_replicas=1, total_num_requests=5.0,
                            total_queued_requests=1.0, capacity_adjusted_min_replicas=0,
                            capacity_adjusted_max_replicas=2, config=None)
print(policy(ctx)[0], "cluster" in sys.modules)
"""


def test_serialized_policy_runs_where_the_project_cannot_be_imported() -> None:
    """Serve cloudpickles the policy's module by value into the controller: it must need no other project module."""
    fields = serve_autoscaling_config(min_replicas=0, max_replicas=2, target_ongoing_requests=2.0)
    pickled = ray_config(**fields).policy.get_serialized_policy_def()
    out = subprocess.run([sys.executable, "-c", BLOCKED_LOAD], input=pickled, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["2", "False"]


def test_plain_function_import_path_is_accepted() -> None:
    config = ray_config(policy={"policy_function": POLICY_FUNCTION})
    assert config.policy.policy_function == POLICY_FUNCTION
    decide = config.policy.get_policy()
    ctx = ray_context(config, running=2, total=6.0, queued=2.0)
    assert decide(ctx) == (3, {STATE_REASON_KEY: ap.REASON_LOAD})


def test_policy_config_names_the_function_without_kwargs() -> None:
    """Kwargs would be part of the code version: an objective edit would restart the model's engines."""
    assert policy_config() == {"policy_function": POLICY_FUNCTION}


def test_signals_from_the_real_context() -> None:
    config = ray_config()
    ctx = ray_context(config, running=1, target=3, total=9.0, queued=4.0, now=1000.0, last_up=940.0,
                      metrics={WAIT_METRIC: {"a": 0.5}, OBJECTIVE_METRIC: {"a": 3.0}})  # fmt: skip
    s = signals_from_context(ctx, latency_objective_s=1.0)
    assert (s.current_replicas, s.starting_replicas, s.min_replicas, s.max_replicas) == (3, 2, 0, 4)
    assert (s.ongoing_requests, s.queued_at_handles, s.target_ongoing_requests) == (5.0, 4.0, 2.0)
    assert (s.latency_objective_s, s.measured_wait_s) == (1.0, 0.5)  # the kwarg wins over the replicas' metric
    assert (s.seconds_since_scale_up, s.seconds_since_scale_down) == (60.0, math.inf)
    assert (s.upscale_delay_s, s.downscale_delay_s, s.idle_delay_s) == (0.0, 0.0, 0.0)  # Serve applies them
    assert signals_from_context(ctx).latency_objective_s == 3.0  # else the replicas' own report


def test_serve_policy_reads_the_wait_metric_across_replicas() -> None:
    config = ray_config()
    metrics = {WAIT_METRIC: {"a": 1.0, "b": 3.0}, OBJECTIVE_METRIC: {"a": 1.0, "b": 1.0}}
    ctx = ray_context(config, running=2, total=2.0, metrics=metrics)
    assert serve_policy(ctx) == (4, {STATE_REASON_KEY: ap.REASON_LATENCY})  # mean wait 2.0 = twice the objective


def test_duck_typed_context_without_optional_fields() -> None:
    """Queued requests are Optional in Ray's signature; metrics and timestamps may be absent."""
    ctx = SimpleNamespace(
        current_num_replicas=1,
        target_num_replicas=1,
        total_num_requests=0.0,
        total_queued_requests=None,
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=2,
        config=SimpleNamespace(target_ongoing_requests=None),
    )
    assert serve_policy(ctx) == (0, {STATE_REASON_KEY: ap.REASON_TO_ZERO})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def serve_wrapped(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeClock]:
    """The policy as Serve 2.60 really runs it: inside ``_apply_autoscaling_config`` (delays, cold start), with
    the wrapper's clock faked. Private API, pinned by ray==2.60.0: this is the behaviour the report relies on."""
    import ray.serve.autoscaling_policy as serve_ap

    clock = FakeClock()
    monkeypatch.setattr(serve_ap, "time", SimpleNamespace(time=clock.time, monotonic=clock.time))
    config = ray_config(upscale_delay_s=0.0, downscale_delay_s=60.0, downscale_to_zero_delay_s=300.0)
    policy = serve_ap._apply_autoscaling_config(config.policy.get_policy())
    return (lambda **kw: policy(ray_context(config, **kw))), clock


def test_serve_wakes_from_zero_without_delay(serve_wrapped: tuple[Any, FakeClock]) -> None:
    run, _ = serve_wrapped
    replicas, _state = run(running=0, target=0, total=1.0, queued=1.0)
    assert replicas == 1


def test_serve_keeps_a_waking_replica_when_the_demand_that_woke_it_lapses(serve_wrapped: tuple[Any, FakeClock]) -> None:
    """What a CI run saw: woken at 0 with one request queued at a handle, the replica still starting 40 s later
    when Serve's count of that request fell to 0; the step to zero then stopped the replica mid-start."""
    run, clock = serve_wrapped
    replicas, state = run(running=0, target=0, total=1.0, queued=1.0)
    assert replicas == 1
    for _ in range(10):  # 10 minutes of a start that has not finished, with no demand counted
        clock.now += 60.0
        replicas, state = run(running=0, target=1, state=state)
        assert replicas == 1
    clock.now += 60.0
    _, state = run(running=1, target=1, state=state)  # up at last: idle from here, the usual delay applies
    clock.now += 300.0
    replicas, state = run(running=1, target=1, state=state)
    assert replicas == 0


def test_serve_delays_the_step_to_zero_by_downscale_to_zero_delay(serve_wrapped: tuple[Any, FakeClock]) -> None:
    run, clock = serve_wrapped
    replicas, state = run(running=1)
    assert replicas == 1
    clock.now += 299.0
    replicas, state = run(running=1, state=state)
    assert replicas == 1
    clock.now += 1.0
    replicas, state = run(running=1, state=state)
    assert replicas == 0


def test_serve_resets_the_idle_timer_on_a_request(serve_wrapped: tuple[Any, FakeClock]) -> None:
    run, clock = serve_wrapped
    _, state = run(running=1)
    clock.now += 200.0
    replicas, state = run(running=1, total=0.5, state=state)  # a request in the window: our policy holds 1
    assert replicas == 1
    clock.now += 200.0
    replicas, state = run(running=1, state=state)  # idle again: the 300 s start over
    assert replicas == 1


def test_serve_scales_up_and_down_one_step_per_delay(serve_wrapped: tuple[Any, FakeClock]) -> None:
    run, clock = serve_wrapped
    replicas, state = run(running=1, total=7.0)
    assert replicas == 4
    replicas, state = run(running=4, total=1.0, state=state)
    assert replicas == 4  # wants 3, held for downscale_delay_s
    clock.now += 60.0
    replicas, state = run(running=4, total=1.0, state=state)
    assert replicas == 3  # one replica, not the three the load would allow
