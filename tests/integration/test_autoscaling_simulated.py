"""Autoscaling under the project's policy on a simulated cluster: a ramp of light stand-ins, real engines from zero.

A head (no GPUs) and one L4 node with 4 logical GPUs and the ``l4`` pool resource, on this machine. Every
deployment gets the rendered Serve options of ``specs/autoscaling.yaml`` (``model_deployment``: the plan's
``deployment_options`` plus name and health checks), custom policy ``cluster.autoscaling_policy:serve_policy``
included, with ONE override for test speed: the autoscaling metric cadence (:data:`CADENCE`,
``metrics_interval_s`` and ``look_back_period_s``; Serve's defaults are 10 s and 30 s). Everything else (bounds,
target, delays, GPU share, pool resource, queue bounds, ``user_config``) is what the plan renders.

1. ``ramp`` (a 0.30 GPU share, 1..6 replicas) runs as :class:`RampStandIn`: ModelServer's constructor signature,
   ``reconfigure`` and ``record_autoscaling_stats`` (the real methods), batch slots like an engine's, an async
   ``work(seconds)`` that sleeps, and ``placement()`` from ``PlacementProbe``. Closed-loop load from the driver takes
   it 1 -> max -> 1; at every poll the running replicas' shares per (node, GPU id) must sum to <= 1 and their engine
   memory fractions to <= the plan's headroom.
2. ``smol`` (a real SmolLM2 engine, ``ModelServer``, min_replicas 0) starts at zero, stays there while its health
   is read from Serve's controller, and one request through the handle wakes it (cold start, phases printed).
3. The same model under load goes to 2 engines, then back to 1 and, after ``idle_delay_s``, to zero.

Figures are printed as ``FIGURE:`` lines (``pytest -s``). Ray 2.60 facts this relies on (ray/serve/_private):
handles collect queued and running requests and push them every ``metrics_interval_s``
(``RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE`` defaults to on; the ``*_METRIC_PUSH_INTERVAL_S`` variables are
defined but unused); a handle with a request queued at zero replicas pushes at once, and the controller's cold-start
path sets one replica without calling the policy; the controller decides every ``CONTROL_LOOP_INTERVAL_S`` (0.1 s)
and applies the delays itself (``autoscaling_policy._apply_delay_logic``). A handle's router is created on its
first call without a lock, so handles are used once from one thread before load threads share them
(:class:`ClosedLoop`). The real-engine tests skip without vLLM; the ramp needs none.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from cluster.autoscaling_policy import OBJECTIVE_METRIC, WAIT_METRIC
from cluster.deploy_options import deployment_options, engine_overrides, pool_resource
from cluster.placement import Plan, plan_fleet
from cluster.render.common import model_deployment_name
from cluster.spec import FleetSpec, ModelSpec, load_spec
from deployments.placement_probe import PlacementProbe, replica_placement
from tests.integration.simulated_cluster import simulated_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
real_engine = pytest.mark.skipif(find_spec("vllm") is None, reason="the real SmolLM2 engine needs vLLM (cpu extra)")

SPEC_PATH = Path(__file__).parent / "specs" / "autoscaling.yaml"
POOL = "l4"
RAMP = "ramp"  # light stand-ins
REAL = "smol"  # real engines, min_replicas 0
L4_NODE = {"num_cpus": 12, "num_gpus": 4, "accelerator": "L4"}
EPS = 1e-6

CADENCE = {"metrics_interval_s": 0.5, "look_back_period_s": 2.0}
"""The only option not taken from the plan: how often handles and replicas report, and the window averaged."""

PLACEMENT_LOG = "autoscaling-placement-log"
LOG_NAMESPACE = "slmfleet-autoscaling-test"
POLL_S = 0.25

RAMP_CLIENTS = 12  # closed loop: 12 requests always in flight -> ceil(12 / target 1) = 12 wanted, capped at max 6
WORK_S = 1.5
HOLD_AT_MAX_S = 4.0
RAMP_DEADLINE_S = 90.0
SETTLE_DEADLINE_S = 60.0

HEALTH_READS_S = 10.0
COLD_START_DEADLINE_S = 120.0
REAL_CLIENTS = 8
REAL_MAX_TOKENS = 64
SECOND_ENGINE_DEADLINE_S = 180.0
LIGHT_PAUSE_S = 3.0  # about a 64-token call's time on one of two engines here
TO_ZERO_DEADLINE_S = 60.0


# ---------------------------------------------------------------------------------------------------------------
# The stand-in and the log its replicas write their placement to


class PlacementLog:
    """Where each stand-in replica runs, written from its constructor (so before Serve can call it RUNNING)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def record(self, info: dict[str, Any]) -> None:
        self.records[info["replica_id"]] = info

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.records)


class RampStandIn(PlacementProbe):
    """A ``ModelServer`` without an engine: same constructor and options, the real ``reconfigure`` and
    ``record_autoscaling_stats``, ``concurrent_seqs`` batch slots, and ``work(seconds)`` in place of a generation."""

    def __init__(self, model_name: str, model: ModelSpec, engine_overrides: dict[str, Any] | None = None) -> None:
        import ray

        from deployments.model.batch_slots import BatchSlots

        super().__init__(model_name, model, engine_overrides)
        self.slots = BatchSlots(model.concurrent_seqs)
        self.latency_objective_s: float | None = None
        self.max_waiting = model.max_queued_requests
        self.last_refusal = (float("-inf"), 0.0)
        log = ray.get_actor(PLACEMENT_LOG, namespace=LOG_NAMESPACE)
        ray.get(log.record.remote(replica_placement(model_name, self.engine_overrides)))

    def reconfigure(self, config: dict[str, Any]) -> None:
        from deployments.model.server import ModelServer

        super().reconfigure(config)
        ModelServer.reconfigure(self, config)  # type: ignore[arg-type]

    async def record_autoscaling_stats(self) -> dict[str, float]:
        from deployments.model.server import ModelServer

        return await ModelServer.record_autoscaling_stats(self)  # type: ignore[arg-type]

    async def work(self, seconds: float) -> float:
        """Hold a batch slot for ``seconds``; returns how long the slot took to get."""
        async with self.slots.slot() as waited:
            await asyncio.sleep(seconds)
        return waited


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def module_clock() -> Any:
    start = time.monotonic()
    yield start
    print(f"\nFIGURE: module wall time {time.monotonic() - start:.1f} s")


@pytest.fixture(scope="module")
def spec() -> FleetSpec:
    return load_spec(SPEC_PATH)


@pytest.fixture(scope="module")
def plan(spec: FleetSpec) -> Plan:
    return plan_fleet(spec)


@pytest.fixture(scope="module")
def cluster(module_clock: float) -> Any:
    """Head without GPUs + one L4 node with 4 logical GPUs and the pool resource; Serve without an HTTP proxy."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in lives here, not in the package
    try:
        with simulated_cluster({POOL: L4_NODE}) as sim:
            print(f"\nRay session: {sim.head_node.get_session_dir_path()}")
            yield sim
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def placement_log(cluster: Any) -> Any:
    """The named log actor; the fixture holds its handle, so it lives as long as the module's tests."""
    import ray

    actor = ray.remote(num_cpus=0)(PlacementLog)
    return actor.options(name=PLACEMENT_LOG, namespace=LOG_NAMESPACE).remote()


@pytest.fixture(scope="module")
def bundled_weights(spec: FleetSpec) -> str:
    """Convert the bundled weights once here, not inside a replica's cold start."""
    from cluster.model_store import resolve_source

    return resolve_source(spec.models[REAL].source)


# ---------------------------------------------------------------------------------------------------------------
# Deploying and observing


def app_name(model: str) -> str:
    return model_deployment_name(model)


def rendered_options(plan: Plan, spec: FleetSpec, model: str) -> dict[str, Any]:
    """The rendered Serve config's deployment entry, with only the metric cadence changed (:data:`CADENCE`)."""
    from cluster.render.serve_config import model_deployment

    options = model_deployment(plan, spec, model)
    for key, value in deployment_options(plan, spec, model).items():  # the plan's options, untouched
        assert options[key] == value, key
    assert options["autoscaling_config"]["policy"] == {"policy_function": "cluster.autoscaling_policy:serve_policy"}
    options["autoscaling_config"] = {**options["autoscaling_config"], **CADENCE}
    return options


def deploy(plan: Plan, spec: FleetSpec, model: str, cls: type) -> Any:
    from ray import serve

    options = rendered_options(plan, spec, model)
    app = serve.deployment(cls).options(**options).bind(model, spec.models[model], engine_overrides(plan, model))
    return serve.run(app, name=app_name(model), route_prefix=None)


@dataclass
class Observation:
    """One read of Serve's controller for one model."""

    at: float  # seconds since the phase began
    state: str  # fleet_health.model_health
    running: int
    target: int
    running_ids: list[str]
    live: int  # replicas in any state (starting, running, stopping)


def observe(model: str, t0: float) -> Observation:
    from ray.serve.context import _get_global_client

    from deployments.router.fleet_health import model_health

    details = _get_global_client().get_serve_details()
    health = model_health(details, model)
    deployment = details["applications"][app_name(model)]["deployments"][app_name(model)]
    replicas = deployment.get("replicas", [])
    running_ids = [r["replica_id"] for r in replicas if r["state"] == "RUNNING"]
    return Observation(
        at=time.monotonic() - t0,
        state=health["state"],
        running=health["running"],
        target=health["target"],
        running_ids=running_ids,
        live=len(replicas),
    )


@dataclass
class Timeline:
    """Observations of one phase, and a compact text of its changes for failure messages."""

    seen: list[Observation] = field(default_factory=list)

    def add(self, obs: Observation) -> Observation:
        self.seen.append(obs)
        return obs

    def first(self, predicate: Callable[[Observation], bool]) -> float | None:
        return next((o.at for o in self.seen if predicate(o)), None)

    def states(self) -> list[str]:
        out: list[str] = []
        for obs in self.seen:
            if not out or out[-1] != obs.state:
                out.append(obs.state)
        return out

    def changes(self) -> str:
        rows, last = [], None
        for o in self.seen:
            key = (o.state, o.running, o.target, o.live)
            if key != last:
                rows.append(f"{o.at:6.1f}s {o.state:<15} running={o.running} target={o.target} live={o.live}")
                last = key
        return "\n".join(rows)


def wait_for(
    model: str, t0: float, timeline: Timeline, done: Callable[[Observation], bool], deadline_s: float, **checks: Any
) -> float | None:
    """Poll until ``done`` (returns its time since ``t0``) or the deadline (None); ``checks['each']`` runs per poll."""
    each = checks.get("each")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        obs = timeline.add(observe(model, t0))
        if each is not None:
            each(obs)
        if done(obs):
            return obs.at
        time.sleep(POLL_S)
    return None


SCALE_LINE = re.compile(r"(?:Up|Down)scaling Deployment\(name='([^']+)', app='[^']+'\) from (\d+) to (\d+) replicas")


def scaling_log(cluster: Any, model: str) -> list[tuple[str, int, int]]:
    """The controller's up/down scaling lines for one model: (time as logged, from, to)."""
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs" / "serve"
    events = []
    for path in sorted(logs.glob("controller_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = SCALE_LINE.search(line)
            if match and match.group(1) == app_name(model):
                events.append((" ".join(line.split()[1:3]), int(match.group(2)), int(match.group(3))))
    return events


def describe(cluster: Any, model: str, timeline: Timeline) -> str:
    events = "\n".join(f"  {at} {old} -> {new}" for at, old, new in scaling_log(cluster, model))
    return f"\ntimeline:\n{timeline.changes()}\ncontroller scaling decisions:\n{events or '  (none)'}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5):.2f} s p99 {percentile(values, 0.99):.2f} s (n={len(values)})"


# ---------------------------------------------------------------------------------------------------------------
# The GPU budget, checked at every poll from the replicas' own placements


def check_budget(obs: Observation, records: dict[str, dict[str, Any]], plan: Plan, model: str) -> dict[str, float]:
    """Every running replica holds one GPU id at the plan's share; per (node, GPU) shares sum to <= 1 and engine
    memory fractions to <= the plan's headroom. Returns the peak per-GPU share and the GPUs in use."""
    placed = plan.model(model)
    shares: dict[tuple[str, str], float] = defaultdict(float)
    fractions: dict[tuple[str, str], float] = defaultdict(float)
    for replica_id in obs.running_ids:
        info = records.get(replica_id)
        assert info is not None, f"running replica {replica_id} never logged its placement"
        where = f"{model} replica {replica_id}"
        assert info["assigned_resources"].get(pool_resource(POOL)) == 1, where
        assert info["assigned_resources"].get("GPU") == pytest.approx(placed.share), where
        assert len(info["gpu_ids"]) == 1, f"{where}: GPU ids {info['gpu_ids']}"
        assert info["gpu_memory_utilization"] == pytest.approx(placed.gpu_memory_utilization), where
        slot = (info["node_id"], info["gpu_ids"][0])
        shares[slot] += placed.share
        fractions[slot] += info["gpu_memory_utilization"]
    for slot, total in shares.items():
        assert total <= 1.0 + EPS, f"at {obs.at:.1f}s GPU {slot}: shares sum to {total}"
        assert fractions[slot] <= plan.headroom + EPS, f"at {obs.at:.1f}s GPU {slot}: fractions {fractions[slot]}"
    return {"peak_share": max(shares.values(), default=0.0), "gpus": float(len(shares))}


class ClosedLoop:
    """``clients`` threads, each calling ``call(client, n)`` again as soon as it returns, until the block exits.

    ``calls`` holds (started, seconds, result) per finished call, started relative to ``t0``. Leaving the block
    stops the clients, waits for their last calls and re-raises a client's failure.

    The handle the clients share must have made one call before (:func:`init_handle`): Ray 2.60 creates a handle's
    router lazily and without a lock (``DeploymentHandle._init``), so first calls racing from several threads build
    several routers under ONE handle id. Each pushes its own counts; the controller keeps the latest report per
    handle id, so it sees 0 ongoing requests most of the time under full load, and the policy steps down.
    """

    def __init__(self, clients: int, call: Callable[[int, int], Any], t0: float, pause_s: float = 0.0) -> None:
        """``pause_s``: each client's think time between its calls (not counted in their latency)."""
        self.clients, self.call, self.t0, self.pause_s = clients, call, t0, pause_s
        self.calls: list[tuple[float, float, Any]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._futures: list[Any] = []

    def _client(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            began = time.monotonic()
            result = self.call(index, n)
            self.calls.append((began - self.t0, time.monotonic() - began, result))
            n += 1
            self._stop.wait(self.pause_s)

    def __enter__(self) -> ClosedLoop:
        self._futures = [self._pool.submit(self._client, i) for i in range(self.clients)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown()
            self.stopped_at = time.monotonic()


def init_handle(handle: Any, method: str, *args: Any) -> Any:
    """One call from this thread, so the handle's router exists before threads share it (see :class:`ClosedLoop`)."""
    return getattr(handle, method).remote(*args).result(timeout_s=COLD_START_DEADLINE_S)


# ---------------------------------------------------------------------------------------------------------------
# 1. The ramp: light stand-ins, real options


def test_ramp_goes_to_max_and_back_within_the_gpu_budget(
    cluster: Any, placement_log: Any, spec: FleetSpec, plan: Plan
) -> None:
    import ray
    from ray import serve

    placed = plan.model(RAMP)
    assert placed.kind == "fraction" and 0 < placed.share < 1, placed
    low, high = placed.min_replicas, placed.max_replicas
    assert (low, high) == (1, 6)
    handle = deploy(plan, spec, RAMP, RampStandIn)
    # what the replica reports to the policy: no wait yet, and the objective its user_config carried
    stats = init_handle(handle, "record_autoscaling_stats")
    assert stats == {WAIT_METRIC: 0.0, OBJECTIVE_METRIC: spec.models[RAMP].latency_objective_s}, stats
    peaks = {"peak_share": 0.0, "gpus": 0.0}

    def budget(obs: Observation) -> None:
        assert obs.running <= high and obs.target <= high, f"above max_replicas at {obs.at:.1f}s: {obs}"
        for key, value in check_budget(obs, ray.get(placement_log.snapshot.remote()), plan, RAMP).items():
            peaks[key] = max(peaks[key], value)

    timeline = Timeline()
    t0 = time.monotonic()
    first = timeline.add(observe(RAMP, t0))
    budget(first)
    assert (first.running, first.target) == (low, low), timeline.changes()

    with ClosedLoop(RAMP_CLIENTS, lambda *_: handle.work.remote(WORK_S).result(timeout_s=120), t0) as load:
        if wait_for(RAMP, t0, timeline, lambda o: o.running >= high, RAMP_DEADLINE_S, each=budget) is not None:
            wait_for(RAMP, t0, timeline, lambda o: False, HOLD_AT_MAX_S, each=budget)  # no step down under load
    t_second = timeline.first(lambda o: o.running >= 2)
    t_max = timeline.first(lambda o: o.running >= high)
    assert t_second is not None and t_max is not None, f"never at {high}" + describe(cluster, RAMP, timeline)
    held = [o.target for o in timeline.seen if o.at >= t_max]
    assert set(held) == {high}, "stepped down under load" + describe(cluster, RAMP, timeline)

    settle = Timeline()
    at_min = lambda o: o.running == low and o.target == low  # noqa: E731
    back = wait_for(RAMP, load.stopped_at, settle, at_min, SETTLE_DEADLINE_S, each=budget)
    assert back is not None, f"not back at {low} in {SETTLE_DEADLINE_S}s" + describe(cluster, RAMP, settle)
    downs = [(old, new) for _, old, new in scaling_log(cluster, RAMP) if new < old]
    assert downs and all(old - new == 1 for old, new in downs), f"not one step at a time: {downs}"

    print(f"\nramp timeline:\n{timeline.changes()}\nafter the load:\n{settle.changes()}")
    print(f"controller: {scaling_log(cluster, RAMP)}")
    print(f"FIGURE: ramp cadence override {CADENCE}; load {RAMP_CLIENTS} clients x work({WORK_S}s)")
    print(f"FIGURE: ramp time to 2nd replica RUNNING {t_second:.1f} s, to max ({high}) {t_max:.1f} s")
    print(
        f"FIGURE: ramp work() latency until max {latency([s for began, s, _ in load.calls if began <= t_max])}; "
        f"whole load {latency([s for _, s, _ in load.calls])}"
    )
    print(f"FIGURE: ramp time back to min ({low}) after the load stopped {back:.1f} s ({len(downs)} single steps)")
    print(f"FIGURE: ramp peak GPU share on one card {peaks['peak_share']:.2f}, cards used {int(peaks['gpus'])}")
    serve.delete(app_name(RAMP))  # frees the node for the real engines


# ---------------------------------------------------------------------------------------------------------------
# 2. A real engine from zero (cold start)


def generation(request_id: str, max_tokens: int, prompt: str = "What is the capital of France?") -> Any:
    from deployments.protocol import GenerationRequest

    return GenerationRequest(
        request_id=request_id,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
    )


@real_engine
def test_a_real_engine_at_zero_stays_there_under_health_reads_and_wakes_on_a_request(
    cluster: Any, spec: FleetSpec, plan: Plan, bundled_weights: str
) -> None:
    from deployments.model.server import ModelServer

    assert plan.model(REAL).min_replicas == 0
    handle = deploy(plan, spec, REAL, ModelServer)

    t0 = time.monotonic()
    idle = Timeline()
    while time.monotonic() - t0 < HEALTH_READS_S:  # what /healthz does: read the controller, never call the model
        obs = idle.add(observe(REAL, t0))
        assert (obs.state, obs.running, obs.target, obs.live) == ("scaled_to_zero", 0, 0, 0), idle.changes()
        time.sleep(POLL_S)

    cold = Timeline()
    t0 = time.monotonic()

    def ask() -> tuple[Any, float]:
        result = handle.generate.remote(generation("cold", 16)).result(timeout_s=180)
        return result, time.monotonic() - t0

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(ask)
        wait_for(REAL, t0, cold, lambda _: answer.done(), COLD_START_DEADLINE_S + 60)
        result, total = answer.result()
    cold.add(observe(REAL, t0))
    assert result.error is None, result.error
    assert result.text.strip() and result.completion_tokens > 0
    assert total <= COLD_START_DEADLINE_S, f"cold start {total:.1f}s" + describe(cluster, REAL, cold)
    assert max(o.live for o in cold.seen) == 1, cold.changes()
    # scaled_to_zero until the controller saw the queued request, waking while the engine starts, then ready
    assert cold.states() in (["scaled_to_zero", "waking", "ready"], ["waking", "ready"]), cold.changes()
    t_running = cold.first(lambda o: o.running >= 1) or total
    t_woken = cold.first(lambda o: o.target >= 1)

    phases = handle.startup.remote().result(timeout_s=30)
    print(f"\ncold start timeline:\n{cold.changes()}\nanswer: {result.text!r}")
    print(f"FIGURE: cold start health reads at zero {len(idle.seen)} over {HEALTH_READS_S:.0f} s, target stayed 0")
    print(f"FIGURE: cold start request -> answer {total:.1f} s (deadline {COLD_START_DEADLINE_S:.0f} s)")
    print(f"FIGURE: cold start request -> controller target 1 (as polled) {t_woken:.1f} s")
    print(f"FIGURE: cold start request -> replica RUNNING (as polled every {POLL_S}s) {t_running:.1f} s")
    print(f"FIGURE: cold start replica phases {phases} (sum {sum(phases.values()):.1f} s)")
    print(f"FIGURE: cold start answer after the replica was ready {total - t_running:.1f} s")


# ---------------------------------------------------------------------------------------------------------------
# 3. Real engines 1 -> 2 under load, then back to 1 and to zero


def step_down_under_light_load(
    cluster: Any, generate: Callable[[int, int], Any], t0: float, after: Timeline
) -> tuple[ClosedLoop, float, float, list[tuple[float, float]]]:
    """The load falls to what one engine serves (one client that pauses as long as a call takes, so about half a
    request in flight, under the policy's 0.8 x target for one replica fewer): the step down to one drains the
    stopping replica's requests while the light load goes on, and none of them fails. Returns the light load, when
    one engine was the target, when the stopping one was gone, and the requests in flight across the step."""
    at_one = lambda o: o.target == 1 and o.running == 1  # noqa: E731
    with ClosedLoop(1, generate, t0, pause_s=LIGHT_PAUSE_S) as light:
        t_one = wait_for(REAL, t0, after, at_one, TO_ZERO_DEADLINE_S)
        assert t_one is not None, "did not step down to one engine" + describe(cluster, REAL, after)
        t_drained = wait_for(REAL, t0, after, lambda o: o.live == 1, TO_ZERO_DEADLINE_S)
        assert t_drained is not None, "the stopping engine never went" + describe(cluster, REAL, after)
    errors = [result.error for _, _, result in light.calls if result.error is not None]
    assert not errors, errors[:3]
    stepping = [(began, took) for began, took, _ in light.calls if began < t_drained and began + took > t_one - 2]
    assert stepping, "no request was in flight while the second engine stopped"
    return light, t_one, t_drained, stepping


@real_engine
def test_real_engines_scale_to_two_under_load_then_back_to_zero(
    cluster: Any, spec: FleetSpec, plan: Plan, bundled_weights: str
) -> None:
    from ray import serve

    high = plan.model(REAL).max_replicas
    scaling = spec.models[REAL].autoscaling
    handle = serve.get_deployment_handle(app_name(REAL), app_name(REAL))
    warm = init_handle(handle, "generate", generation("warm", 8))  # wakes the model if it already went to zero
    assert warm.error is None, warm.error

    timeline = Timeline()

    def at_most_two(obs: Observation) -> None:
        assert obs.live <= high, f"{obs.live} engines at {obs.at:.1f}s\n" + timeline.changes()

    def generate(client: int, n: int) -> Any:
        request = generation(f"load-{client}-{n}", REAL_MAX_TOKENS, "Write a short poem about the sea.")
        return handle.generate.remote(request).result(timeout_s=120)

    t0 = time.monotonic()
    first = timeline.add(observe(REAL, t0))
    at_most_two(first)
    assert first.running >= 1, timeline.changes()
    with ClosedLoop(REAL_CLIENTS, generate, t0) as load:
        t_second = wait_for(REAL, t0, timeline, lambda o: o.running >= high, SECOND_ENGINE_DEADLINE_S, each=at_most_two)
    assert t_second is not None, f"no 2nd engine in {SECOND_ENGINE_DEADLINE_S}s" + describe(cluster, REAL, timeline)
    t_asked = timeline.first(lambda o: o.target >= high) or t_second
    assert t_asked >= scaling.upscale_delay_s - 1.0, f"2nd engine asked for at {t_asked:.1f}s, before upscale_delay_s"
    errors = [result.error for _, _, result in load.calls if result.error is not None]
    assert not errors, errors[:3]

    after = Timeline()
    light, t_one, t_drained, stepping = step_down_under_light_load(cluster, generate, load.stopped_at, after)
    at_zero = lambda o: o.state == "scaled_to_zero"  # noqa: E731
    t_zero = wait_for(REAL, light.stopped_at, after, at_zero, TO_ZERO_DEADLINE_S, each=at_most_two)
    assert t_zero is not None, "did not scale to zero" + describe(cluster, REAL, after)
    events = [(old, new) for _, old, new in scaling_log(cluster, REAL)]
    assert events[-2:] == [(2, 1), (1, 0)], events
    assert t_zero >= scaling.idle_delay_s - 1.0, f"zero {t_zero:.1f}s after the last request"
    t_gone = wait_for(REAL, light.stopped_at, after, lambda o: o.live == 0, TO_ZERO_DEADLINE_S)  # engines stopped
    assert t_gone is not None, "engines still stopping" + describe(cluster, REAL, after)

    print(f"\nload timeline:\n{timeline.changes()}\nafter the load:\n{after.changes()}")
    print(f"controller: {scaling_log(cluster, REAL)}")
    print(
        f"FIGURE: real load {REAL_CLIENTS} clients x generate(max_tokens {REAL_MAX_TOKENS}), upscale_delay_s "
        f"{scaling.upscale_delay_s:g}: 2nd engine asked for at {t_asked:.1f} s, RUNNING {t_second:.1f} s"
    )
    print(f"FIGURE: real generate latency under load {latency([s for _, s, _ in load.calls])}")
    print(
        f"FIGURE: real step down under a light load (1 client): one engine at {t_one:.1f} s after the load fell, "
        f"the stopping engine gone at {t_drained:.1f} s; {len(stepping)} requests in flight across the step down, "
        f"0 failed, slowest {max(took for _, took in stepping):.1f} s; {len(light.calls)} light requests in all"
    )
    print(
        f"FIGURE: real after the last request: scaled_to_zero at {t_zero:.1f} s "
        f"(idle_delay_s {scaling.idle_delay_s:g}), last engine process gone at {t_gone:.1f} s"
    )
