"""Where a model replica actually runs, read from inside it; and a light stand-in deployment that only reports that.

:func:`replica_placement` is what ``ModelServer.placement()`` and ``PlacementProbe.placement()`` return: the Ray
node, the GPU ids and resources Ray assigned, the placement group's bundles, and the engine memory fraction the
plan gave. :class:`PlacementProbe` takes the same constructor arguments and Serve options as ``ModelServer`` but
starts no engine, so a plan can be deployed on a simulated cluster where real engines would not fit in RAM.
Imports Ray only (no vLLM).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
from ray import serve
from ray.util.placement_group import PlacementGroup, get_current_placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.spec import ModelSpec


def replica_placement(model_name: str, engine_overrides: dict[str, Any] | None) -> dict[str, Any]:
    """This replica's node, GPU ids, assigned resources, placement group bundles and engine memory fraction."""
    ctx = ray.get_runtime_context()
    replica = serve.get_replica_context()
    overrides = engine_overrides or {}
    pg = get_current_placement_group()
    return {
        "model": model_name,
        "deployment": replica.deployment,
        "replica_id": replica.replica_id.unique_id,
        "node_id": ctx.get_node_id(),
        "gpu_ids": [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "assigned_resources": dict(ctx.get_assigned_resources()),
        "placement_group": _placement_group_summary(pg) if pg is not None else None,
        "gpu_memory_utilization": overrides.get("gpu_memory_utilization"),
        "tensor_parallel_size": overrides.get("tensor_parallel_size", 1),
    }


def _placement_group_summary(pg: PlacementGroup) -> dict[str, Any]:
    table = placement_group_table(pg)
    return {
        "id": pg.id.hex(),
        "strategy": table.get("strategy"),
        "state": table.get("state"),
        "bundles": [dict(b) for _, b in sorted(table.get("bundles", {}).items())],
        "bundle_nodes": [node for _, node in sorted(table.get("bundles_to_node_id", {}).items())],
    }


@ray.remote(num_cpus=0)
def _bundle_holder() -> dict[str, Any]:
    """What one of vLLM's tensor-parallel workers would see in its bundle: node and GPU ids."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]}


async def probe_bundles(pg: PlacementGroup, bundles: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Run one task per bundle holding that bundle's GPUs, as vLLM's Ray workers would, and report where it ran."""
    refs = [
        _bundle_holder.options(
            num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i),
        ).remote()
        for i, bundle in enumerate(bundles)
    ]
    return list(await asyncio.gather(*refs))


class PlacementProbe:
    """Stand-in for ``ModelServer`` (same constructor, same Serve options): reports its placement, no engine."""

    def __init__(self, model_name: str, model: ModelSpec, engine_overrides: dict[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.model = model
        self.engine_overrides = dict(engine_overrides or {})

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Takes the model's ``user_config`` as ``ModelServer`` does (Serve refuses one without a reconfigure)."""
        self.user_config = dict(config)

    async def placement(self) -> dict[str, Any]:
        """:func:`replica_placement`, plus node and GPU ids seen by a task in each placement-group bundle."""
        info = replica_placement(self.model_name, self.engine_overrides)
        pg = get_current_placement_group()
        if pg is not None and info["placement_group"] is not None:
            info["bundle_holders"] = await probe_bundles(pg, info["placement_group"]["bundles"])
        return info
