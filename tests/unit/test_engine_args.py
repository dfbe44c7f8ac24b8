"""vLLM engine arguments from the spec: where the CPU worker runs, and the placement plan's overrides on top."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.spec import ModelSpec, SpecError, parse_spec

BASE = {"models": {"m": {"source": "bundled:smollm2-135m-instruct"}}, "specialists": {}}


def model(engine: dict[str, Any] | None = None, **fields: Any) -> ModelSpec:
    data = {"source": "bundled:smollm2-135m-instruct", **fields}
    if engine is not None:
        data["engine"] = engine
    return parse_spec({**BASE, "models": {"m": data}}, "test").models["m"]


def executor(spec: ModelSpec, overrides: dict[str, Any] | None = None) -> Any:
    from deployments.model.engine import engine_args  # imports vLLM: only inside the tests that need it

    return engine_args("/models/m", spec, overrides).distributed_executor_backend


def test_on_the_cpu_the_worker_runs_inside_the_engine_core_by_default() -> None:
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    assert executor(model()) is UniProcExecutor


def test_own_process_leaves_vllm_its_own_choice() -> None:
    assert executor(model(engine={"cpu_worker": "own_process"})) is None


def test_the_placement_plans_executor_wins() -> None:
    """Tensor parallelism brings ``"ray"`` from the plan; the CPU choice never replaces it."""
    assert executor(model(tensor_parallel=2), {"distributed_executor_backend": "ray"}) == "ray"


def test_an_unknown_cpu_worker_names_its_field() -> None:
    with pytest.raises(SpecError) as caught:
        model(engine={"cpu_worker": "threads"})
    assert "models.m.engine.cpu_worker" in str(caught.value)
    assert "in_process" in str(caught.value)


def test_an_engine_core_holding_the_worker_gets_vllms_worker_threads(monkeypatch) -> None:
    """Ray sets OMP_NUM_THREADS to a replica's num_cpus (1); the engine core the replica starts gets every core but
    one instead, as vLLM's own worker process would, and the replica's value is back afterwards."""
    from deployments.model import engine

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda _pid: set(range(16)))
    seen = {}
    for layout in ("in_process", "own_process"):
        with engine._engine_core_threads(engine.engine_args("/models/m", model(engine={"cpu_worker": layout}))):
            seen[layout] = engine.os.environ["OMP_NUM_THREADS"]
    assert seen == {"in_process": "15", "own_process": "1"}
    assert engine.os.environ["OMP_NUM_THREADS"] == "1"


def test_a_one_core_host_still_gets_a_thread(monkeypatch) -> None:
    from deployments.model import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda _pid: {0})
    assert engine.cpu_worker_threads() == 1
