"""The placement plan: which pool, node, GPU and memory budget every model replica gets. Pure data, no Ray.

Ray hands out GPU fractions but does not police memory, so the planner derives both numbers an engine needs from
one integer: its share of a GPU in hundredths. ``num_gpus = units / 100`` and
``gpu_memory_utilization = units / 100 * HEADROOM``; Ray never puts more than 100 units on one GPU, so the engines
on a card can never reserve more than ``HEADROOM`` of it, whichever GPU Ray picks.

- Small models (``tier: slm``) are packed first-fit-decreasing as fractions onto GPUs of pools whose ``tiers``
  include ``slm``; a model's replicas all sit on one pool (a Serve deployment has one resource shape).
- Large models (``tier: llm``, or any model with ``tensor_parallel > 1``) get whole GPUs, tensor parallel from the
  spec or the smallest power of two that fits, as one group of ``tp`` GPUs on one node; those GPUs hold nothing else.
- Replica counts are the autoscaling maxima, so every replica Ray may ever start has its place.
- A spec without pools (the local default fleet) gets an implicit CPU placement named ``local``.

Models are planned in name order and pools tried in the order the spec lists them, so the plan does not depend on
the order models are written in, and the same spec always gives the same plan.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cluster.memory import MemoryEstimate, UnknownModelSizeError, estimate_engine_memory, read_model_config
from cluster.spec import FleetSpec, ModelSpec, PoolSpec

HEADROOM = 0.9  # usable fraction of a GPU's memory; the rest absorbs what vLLM's profiling does not see
SHARE_UNITS = 100  # a GPU is cut into 100 units: shares are multiples of 0.01, exact in Ray's fixed point
LOCAL_POOL = "local"
CPU_ENGINE_MEMORY_FRACTION = 0.15  # of host memory, on vLLM's CPU backend (0.15-0.3 measured to start)
ShareKind = Literal["fraction", "whole", "cpu"]


class PlacementError(ValueError):
    """A spec the pools cannot hold; the message names the model, its need, and the largest offer."""


@dataclass(frozen=True)
class PlacedReplica:
    """One row of the plan: one engine replica and where it sits."""

    pool: str
    node: int | None  # None on CPU placements: nodes are not counted there
    gpus: tuple[int, ...]  # GPU indices on the node; empty on CPU placements
    model: str
    replica: int
    share: float  # fraction of each listed GPU this replica holds
    gib: float | None  # the engine's memory reservation (all its GPUs together); None when unknown (CPU)
    engine_memory_fraction: float  # vLLM gpu_memory_utilization


@dataclass(frozen=True)
class ModelPlacement:
    """Where all replicas of one model go and the resources each asks for."""

    model: str
    tier: str
    pool: str
    accelerator: str
    kind: ShareKind
    share: float  # num_gpus of one replica for "fraction"; 1.0 (each GPU whole) for "whole"; 0 for "cpu"
    tensor_parallel: int
    gpu_memory_utilization: float
    gib: float | None  # engine memory; None when unknown on a CPU placement
    memory: MemoryEstimate | None
    min_replicas: int
    max_replicas: int

    @property
    def gpus_per_replica(self) -> float:
        if self.kind == "whole":
            return float(self.tensor_parallel)
        return self.share

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = self.memory.to_dict() if self.memory else None
        data["gib"] = _round(self.gib)
        return data


@dataclass(frozen=True)
class PoolUsage:
    """How much of one pool the plan uses, next to the two yardsticks the issue asks for."""

    pool: str
    accelerator: str
    gpu_memory_gib: float
    gpus_per_node: int
    max_nodes: int
    nodes_used: int
    gpus_used: int
    one_model_per_gpu: int  # every replica alone on its own GPU(s)
    lower_bound: int  # whole-GPU groups + ceil(sum of fractional engines' GiB / usable GiB per GPU)
    memory_floor: int  # ceil(sum of all engines' GiB / GPU memory): no headroom, no whole-GPU rule
    packing_bound: int  # whole-GPU groups + Martello-Toth L2 bound on the shares: no packing can use fewer


@dataclass(frozen=True)
class Plan:
    """The scheduler's decision for a whole fleet; rendered into Serve options, tables and JSON."""

    models: tuple[ModelPlacement, ...]
    replicas: tuple[PlacedReplica, ...]
    pools: tuple[PoolUsage, ...]
    headroom: float = HEADROOM
    share_grid: float = 1 / SHARE_UNITS

    def model(self, name: str) -> ModelPlacement:
        for placement in self.models:
            if placement.model == name:
                return placement
        raise KeyError(f"no model '{name}' in the plan (planned: {', '.join(m.model for m in self.models)})")

    def totals(self) -> dict[str, int]:
        return {
            "gpus_used": sum(p.gpus_used for p in self.pools),
            "one_model_per_gpu": sum(p.one_model_per_gpu for p in self.pools),
            "lower_bound": sum(p.lower_bound for p in self.pools),
            "memory_floor": sum(p.memory_floor for p in self.pools),
            "packing_bound": sum(p.packing_bound for p in self.pools),
            "nodes_used": sum(p.nodes_used for p in self.pools),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "headroom": self.headroom,
            "share_grid": self.share_grid,
            "models": {m.model: m.to_dict() for m in self.models},
            "replicas": [{**asdict(r), "gpus": list(r.gpus), "gib": _round(r.gib)} for r in self.replicas],
            "pools": {p.pool: asdict(p) for p in self.pools},
            "totals": self.totals(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------------------------------------------------------
# Share arithmetic: one integer decides both the Ray fraction and the engine's memory budget.


def share_units(gib: float, usable_gib: float) -> int:
    """Hundredths of a GPU an engine of ``gib`` needs, rounded up (at least one)."""
    return max(1, math.ceil(round(gib / usable_gib * SHARE_UNITS, 9)))


def units_to_share(units: int) -> float:
    return units / SHARE_UNITS


def units_to_utilization(units: int) -> float:
    """``gpu_memory_utilization`` for a share: the share of the usable part of the card, floored to 1e-4."""
    return math.floor(units * HEADROOM * 10_000 / SHARE_UNITS + 1e-9) / 10_000


# ---------------------------------------------------------------------------------------------------------------
# Packing state: GPUs of opened nodes, per pool. Mutable while planning, never leaves this module.


@dataclass
class _Gpu:
    node: int
    index: int
    free: int = SHARE_UNITS
    whole: bool = False  # held by a whole-GPU group: nothing else may land here


@dataclass
class _PoolState:
    name: str
    spec: PoolSpec
    nodes: list[list[_Gpu]] = field(default_factory=list)

    @property
    def usable_gib(self) -> float:
        return self.spec.gpu_memory_gib * HEADROOM

    def open_node(self) -> list[_Gpu] | None:
        if len(self.nodes) >= self.spec.max_nodes:
            return None
        node = [_Gpu(len(self.nodes), i) for i in range(self.spec.gpus_per_node)]
        self.nodes.append(node)
        return node

    def gpus(self) -> Iterator[_Gpu]:
        for node in self.nodes:
            yield from node

    def nodes_then_new(self) -> Iterator[list[_Gpu]]:
        """Opened nodes in order, then new ones while ``max_nodes`` allows."""
        yield from list(self.nodes)
        while (node := self.open_node()) is not None:
            yield node

    def free_units(self) -> int:
        unopened = (self.spec.max_nodes - len(self.nodes)) * self.spec.gpus_per_node * SHARE_UNITS
        return unopened + sum(g.free for g in self.gpus() if not g.whole)


@dataclass
class _Placed:
    """Rows and per-model facts gathered while planning."""

    models: list[ModelPlacement] = field(default_factory=list)
    rows: list[PlacedReplica] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def plan_from_store(spec: FleetSpec) -> Plan:
    """The plan sized from each model's config.json where this machine has it (local folders, converted
    bundled models); hub ids fall back to declared sizes. What `slmfleet plan`, the renderers and the app use."""
    configs = {
        name: cfg for name, m in spec.engine_models().items() if (cfg := read_model_config(m.source)) is not None
    }
    return plan_fleet(spec, configs)


def plan_fleet(spec: FleetSpec, model_configs: Mapping[str, dict[str, Any]] | None = None) -> Plan:
    """Plan every model of ``spec``; ``model_configs`` maps model names to their config.json when known.

    Raises :class:`PlacementError` when some model cannot be placed.
    """
    configs = model_configs or {}
    if not spec.pools:
        return _plan_local(spec, configs)
    states = {name: _PoolState(name, pool) for name, pool in spec.pools.items()}
    placed = _Placed()
    names = sorted(spec.engine_models())  # a model behind an endpoint takes no GPU
    estimates = {name: _estimate(name, spec.models[name], configs.get(name)) for name in names}
    whole = [n for n in names if _needs_whole_gpus(spec.models[n])]
    fractional = [n for n in names if n not in whole]
    for name in sorted(whole, key=lambda n: (-(spec.models[n].tensor_parallel or 0), -estimates[n].total_gib, n)):
        _place_whole(name, spec.models[name], estimates[name], states, placed)
    for name in sorted(fractional, key=lambda n: (-_fraction_need_gib(spec.models[n], estimates[n], None), n)):
        _place_model_fractions(name, spec.models[name], estimates[name], states, placed)
    return _finish(placed, states, spec)


def _needs_whole_gpus(model: ModelSpec) -> bool:
    return model.tier == "llm" or (model.tensor_parallel or 1) > 1


def _estimate(name: str, model: ModelSpec, config: dict[str, Any] | None) -> MemoryEstimate:
    try:
        return estimate_engine_memory(name, model, config)
    except UnknownModelSizeError as exc:
        raise PlacementError(f"{exc}; GPU pools are sized from it") from None


# ---------------------------------------------------------------------------------------------------------------
# The implicit local CPU placement


def _plan_local(spec: FleetSpec, configs: Mapping[str, dict[str, Any]]) -> Plan:
    placed = _Placed()
    for name in sorted(spec.engine_models()):
        model = spec.models[name]
        try:
            memory: MemoryEstimate | None = estimate_engine_memory(name, model, configs.get(name))
        except UnknownModelSizeError:
            memory = None
        _add_cpu(name, model, memory, placed, pool=LOCAL_POOL, accelerator="cpu")
    return Plan(tuple(placed.models), tuple(placed.rows), ())


def _add_cpu(
    name: str, model: ModelSpec, memory: MemoryEstimate | None, placed: _Placed, *, pool: str, accelerator: str
) -> None:
    utilization = model.engine.gpu_memory_utilization or CPU_ENGINE_MEMORY_FRACTION
    gib = memory.total_gib if memory else None
    placed.models.append(
        _placement(
            name,
            model,
            memory,
            pool=pool,
            accelerator=accelerator,
            kind="cpu",
            share=0.0,
            gib=gib,
            tensor_parallel=model.tensor_parallel or 1,
            utilization=utilization,
        )
    )
    for replica in range(model.autoscaling.max_replicas):
        placed.rows.append(PlacedReplica(pool, None, (), name, replica, 0.0, gib, utilization))


def _placement(
    name: str,
    model: ModelSpec,
    memory: MemoryEstimate | None,
    *,
    pool: str,
    accelerator: str,
    kind: ShareKind,
    share: float,
    gib: float | None,
    tensor_parallel: int,
    utilization: float,
) -> ModelPlacement:
    return ModelPlacement(
        model=name,
        tier=model.tier,
        pool=pool,
        accelerator=accelerator,
        kind=kind,
        share=share,
        tensor_parallel=tensor_parallel,
        gpu_memory_utilization=utilization,
        gib=gib,
        memory=memory,
        min_replicas=model.autoscaling.min_replicas,
        max_replicas=model.autoscaling.max_replicas,
    )


# ---------------------------------------------------------------------------------------------------------------
# Candidate pools


def _candidate_pools(name: str, model: ModelSpec, tier: str, states: dict[str, _PoolState]) -> list[_PoolState]:
    """Pinned pool, else GPU pools admitting ``tier`` in spec order, else CPU pools admitting it."""
    if model.pool is not None:
        pool = states[model.pool]
        if tier not in pool.spec.tiers:
            raise PlacementError(
                f"model '{name}' ({tier} placement) is pinned to pool '{model.pool}', whose tiers are "
                f"{pool.spec.tiers}; add '{tier}' to that pool's tiers or pin another pool"
            )
        return [pool]
    admitting = [s for s in states.values() if tier in s.spec.tiers]
    gpu_pools = [s for s in admitting if s.spec.gpus_per_node > 0]
    if gpu_pools or admitting:
        return gpu_pools or admitting
    raise PlacementError(
        f"model '{name}' needs a pool whose tiers include '{tier}'; pools: "
        + ", ".join(f"{s.name} {s.spec.tiers}" for s in states.values())
    )


# ---------------------------------------------------------------------------------------------------------------
# Whole-GPU models (LLMs, tensor-parallel groups)


def choose_tensor_parallel(model: ModelSpec, memory: MemoryEstimate, pool: PoolSpec) -> int | None:
    """The spec's tensor_parallel if it fits ``pool``, else the smallest power of two that does; None if none."""
    usable = pool.gpu_memory_gib * HEADROOM
    if model.tensor_parallel is not None:
        fits = model.tensor_parallel <= pool.gpus_per_node and memory.per_gpu_gib(model.tensor_parallel) <= usable
        return model.tensor_parallel if fits else None
    tp = 1
    while tp <= pool.gpus_per_node:
        if memory.per_gpu_gib(tp) <= usable:
            return tp
        tp *= 2
    return None


def _place_whole(
    name: str, model: ModelSpec, memory: MemoryEstimate, states: dict[str, _PoolState], placed: _Placed
) -> None:
    tier = model.tier
    candidates = _candidate_pools(name, model, tier, states)
    for state in candidates:
        if state.spec.gpus_per_node == 0:
            _add_cpu(name, model, memory, placed, pool=state.name, accelerator=state.spec.accelerator)
            return
        tp = choose_tensor_parallel(model, memory, state.spec)
        if tp is None:
            continue
        trial = copy.deepcopy(state)
        groups = [_take_whole_group(trial, tp) for _ in range(model.autoscaling.max_replicas)]
        if all(g is not None for g in groups):
            states[state.name] = trial
            _record_whole(name, model, memory, placed, state=trial, tp=tp, groups=groups)  # type: ignore[arg-type]
            return
    raise PlacementError(_whole_error(name, model, memory, candidates))


def _take_whole_group(state: _PoolState, tp: int) -> tuple[int, tuple[int, ...]] | None:
    """First node with ``tp`` untouched GPUs: mark them whole and return (node, GPU indices)."""
    for node in state.nodes_then_new():
        free = [g for g in node if g.free == SHARE_UNITS and not g.whole][:tp]
        if len(free) == tp:
            for gpu in free:
                gpu.whole, gpu.free = True, 0
            return free[0].node, tuple(g.index for g in free)
    return None


def _record_whole(
    name: str,
    model: ModelSpec,
    memory: MemoryEstimate,
    placed: _Placed,
    *,
    state: _PoolState,
    tp: int,
    groups: list[tuple[int, tuple[int, ...]]],
) -> None:
    utilization = model.engine.gpu_memory_utilization or HEADROOM
    placed.models.append(
        _placement(
            name,
            model,
            memory,
            pool=state.name,
            accelerator=state.spec.accelerator,
            kind="whole",
            share=1.0,
            gib=memory.total_gib,
            tensor_parallel=tp,
            utilization=utilization,
        )
    )
    for replica, (node, gpus) in enumerate(groups):
        placed.rows.append(PlacedReplica(state.name, node, gpus, name, replica, 1.0, memory.total_gib, utilization))


def _whole_error(name: str, model: ModelSpec, memory: MemoryEstimate, candidates: list[_PoolState]) -> str:
    need = f"{memory.total_gib:.1f} GiB per engine"
    if model.tensor_parallel:
        need += f" at tensor_parallel {model.tensor_parallel} ({memory.per_gpu_gib(model.tensor_parallel):.1f} GiB/GPU)"
    return (
        f"model '{name}' ({model.tier}) cannot be placed: it needs {need} for {model.autoscaling.max_replicas} "
        f"replica(s) on whole GPUs of one node; {_largest_offer(candidates)}"
    )


def _largest_offer(candidates: list[_PoolState]) -> str:
    """The biggest thing any candidate pool still offers: usable GiB per GPU and per node, free GPUs."""
    if not candidates:
        return "no pool admits it"
    best = max(candidates, key=lambda s: (s.usable_gib * s.spec.gpus_per_node, s.usable_gib))
    free_gpus = sum(1 for g in best.gpus() if g.free == SHARE_UNITS and not g.whole)
    free_gpus += (best.spec.max_nodes - len(best.nodes)) * best.spec.gpus_per_node
    return (
        f"the largest offer is pool '{best.name}': {best.spec.gpus_per_node} x {best.spec.gpu_memory_gib:g} GiB "
        f"{best.spec.accelerator} per node ({best.usable_gib:.1f} GiB usable per GPU, "
        f"{best.usable_gib * best.spec.gpus_per_node:.1f} GiB per node), {free_gpus} untouched GPU(s) left "
        f"of {best.spec.max_nodes * best.spec.gpus_per_node}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Fractional models (SLMs sharing GPUs)


def _fraction_need_gib(model: ModelSpec, memory: MemoryEstimate, pool: PoolSpec | None) -> float:
    """Engine memory; a declared gpu_memory_utilization is a floor, since vLLM reserves that much of the card."""
    declared = model.engine.gpu_memory_utilization
    if declared is None or pool is None:
        return memory.total_gib
    return max(memory.total_gib, declared * pool.gpu_memory_gib)


def _place_model_fractions(
    name: str, model: ModelSpec, memory: MemoryEstimate, states: dict[str, _PoolState], placed: _Placed
) -> None:
    candidates = _candidate_pools(name, model, "slm", states)
    for state in candidates:
        if state.spec.gpus_per_node == 0:
            _add_cpu(name, model, memory, placed, pool=state.name, accelerator=state.spec.accelerator)
            return
        units = share_units(_fraction_need_gib(model, memory, state.spec), state.usable_gib)
        if units > SHARE_UNITS:
            continue
        trial = copy.deepcopy(state)
        spots = [_first_fit(trial, units) for _ in range(model.autoscaling.max_replicas)]
        if all(s is not None for s in spots):
            states[state.name] = trial
            _record_fractions(name, model, memory, placed, state=trial, units=units, spots=spots)  # type: ignore[arg-type]
            return
    raise PlacementError(_fraction_error(name, model, memory, candidates))


def _first_fit(state: _PoolState, units: int) -> tuple[int, int] | None:
    """The first GPU (node order, then index) with ``units`` free, opening a node when none has room."""
    for node in state.nodes_then_new():
        for gpu in node:
            if not gpu.whole and gpu.free >= units:
                gpu.free -= units
                return gpu.node, gpu.index
    return None


def _record_fractions(
    name: str,
    model: ModelSpec,
    memory: MemoryEstimate,
    placed: _Placed,
    *,
    state: _PoolState,
    units: int,
    spots: list[tuple[int, int]],
) -> None:
    share, utilization = units_to_share(units), units_to_utilization(units)
    gib = _fraction_need_gib(model, memory, state.spec)
    placed.models.append(
        _placement(
            name,
            model,
            memory,
            pool=state.name,
            accelerator=state.spec.accelerator,
            kind="fraction",
            share=share,
            gib=gib,
            tensor_parallel=1,
            utilization=utilization,
        )
    )
    for replica, (node, gpu) in enumerate(spots):
        placed.rows.append(PlacedReplica(state.name, node, (gpu,), name, replica, share, gib, utilization))


def _fraction_error(name: str, model: ModelSpec, memory: MemoryEstimate, candidates: list[_PoolState]) -> str:
    gpu_pools = [s for s in candidates if s.spec.gpus_per_node > 0]
    biggest = max(gpu_pools, key=lambda s: s.usable_gib)
    free = sum(s.free_units() for s in gpu_pools) / SHARE_UNITS
    return (
        f"model '{name}' (slm) cannot be placed: it needs {memory.total_gib:.1f} GiB of one GPU for each of "
        f"{model.autoscaling.max_replicas} replica(s); the largest GPU any admitting pool offers is "
        f"'{biggest.name}' {biggest.spec.accelerator} with {biggest.usable_gib:.1f} GiB usable, and "
        f"{free:.2f} GPU(s) of free share remain across them; use a larger pool, raise max_nodes, lower "
        "max_replicas/max_model_len/concurrent_seqs, or make it tier: llm with tensor_parallel"
    )


# ---------------------------------------------------------------------------------------------------------------
# Totals


def _finish(placed: _Placed, states: dict[str, _PoolState], spec: FleetSpec) -> Plan:
    rows = sorted(placed.rows, key=lambda r: (list(spec.pools).index(r.pool), r.node or 0, r.gpus, r.model, r.replica))
    models = sorted(placed.models, key=lambda m: m.model)
    usage = tuple(_pool_usage(states[name], [r for r in rows if r.pool == name], models) for name in spec.pools)
    return Plan(tuple(models), tuple(rows), usage)


def _pool_usage(state: _PoolState, rows: list[PlacedReplica], models: list[ModelPlacement]) -> PoolUsage:
    kinds = {m.model: m.kind for m in models if m.pool == state.name}
    used = {(r.node, g) for r in rows for g in r.gpus}
    whole_gpus = sum(len(r.gpus) for r in rows if kinds[r.model] == "whole")
    fraction_gib = sum(r.gib or 0.0 for r in rows if kinds[r.model] == "fraction")
    fraction_units = [round(r.share * SHARE_UNITS) for r in rows if kinds[r.model] == "fraction"]
    gpu_mem = state.spec.gpu_memory_gib
    return PoolUsage(
        pool=state.name,
        accelerator=state.spec.accelerator,
        gpu_memory_gib=gpu_mem,
        gpus_per_node=state.spec.gpus_per_node,
        max_nodes=state.spec.max_nodes,
        nodes_used=len({r.node for r in rows if r.gpus}),
        gpus_used=len(used),
        one_model_per_gpu=sum(max(1, len(r.gpus)) for r in rows if r.gpus),
        lower_bound=whole_gpus + (_ceil(fraction_gib / state.usable_gib) if fraction_gib else 0),
        memory_floor=_ceil(sum(r.gib or 0.0 for r in rows if r.gpus) / gpu_mem) if gpu_mem else 0,
        packing_bound=whole_gpus + packing_lower_bound(fraction_units),
    )


def packing_lower_bound(units: list[int], capacity: int = SHARE_UNITS) -> int:
    """Martello-Toth L2: fewest bins any packing of ``units`` needs; counts items that cannot share a bin.

    For each threshold k <= capacity/2: items above capacity - k each need their own bin, items above half need
    their own bin too, and items in [k, half] fill what the latter leave free before opening bins of their own.
    """
    best = 0
    half = capacity / 2
    for k in sorted({0, *(u for u in units if u <= half)}):
        alone = [u for u in units if u > capacity - k]
        big = [u for u in units if capacity - k >= u > half]
        small = sum(u for u in units if half >= u >= k)
        spill = small - (len(big) * capacity - sum(big))
        best = max(best, len(alone) + len(big) + max(0, math.ceil(spill / capacity)))
    return best


def _ceil(value: float) -> int:
    return math.ceil(round(value, 9))


# ---------------------------------------------------------------------------------------------------------------
# Text rendering


def render_plan(plan: Plan) -> str:
    """The plan as a fixed-width table followed by totals, for ``slmfleet plan``."""
    header = ("pool", "node", "gpu", "model", "replica", "share", "GiB", "mem frac")
    rows = [header, *(_row_cells(r) for r in plan.replicas)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", *_total_lines(plan)])


def _row_cells(row: PlacedReplica) -> tuple[str, ...]:
    node = "-" if row.node is None else str(row.node)
    if not row.gpus:
        gpu = "cpu"
    elif len(row.gpus) == 1:
        gpu = str(row.gpus[0])
    else:
        gpu = f"{row.gpus[0]}-{row.gpus[-1]}"
    share = f"{len(row.gpus)}x{row.share:.2f}" if len(row.gpus) > 1 else f"{row.share:.2f}"
    return (
        row.pool,
        node,
        gpu,
        row.model,
        str(row.replica),
        share,
        "?" if row.gib is None else f"{row.gib:.1f}",
        f"{row.engine_memory_fraction}",
    )


def _total_lines(plan: Plan) -> list[str]:
    if not plan.pools:
        return [f"local CPU placement: {len(plan.replicas)} engine replica(s), no GPUs"]
    lines = []
    for p in plan.pools:
        lines.append(
            f"pool {p.pool} ({p.gpus_per_node} x {p.gpu_memory_gib:g} GiB {p.accelerator}): {p.gpus_used} GPUs on "
            f"{p.nodes_used}/{p.max_nodes} nodes; one-model-per-GPU {p.one_model_per_gpu}; "
            f"lower bound {p.lower_bound}; packing bound {p.packing_bound}; memory floor {p.memory_floor}"
        )
    t = plan.totals()
    lines.append(
        f"total: {t['gpus_used']} GPUs used, vs {t['one_model_per_gpu']} one-model-per-GPU, "
        f"vs lower bound {t['lower_bound']} (packing bound {t['packing_bound']}, memory floor "
        f"{t['memory_floor']}); headroom {plan.headroom:g}, "
        f"shares in steps of {plan.share_grid:g}"
    )
    return lines
