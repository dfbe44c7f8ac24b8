"""What a pool's nodes look like to Kubernetes and to AWS: pod sizes and instance types.

The fleet spec describes pools by accelerator and GPU count only; these tables turn that into requests a
scheduler or a cloud understands. They are deliberately small and documented in docs/deploy.md; a pool they do not
cover fails rendering with the list of what is covered, rather than guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.render.common import RenderError
from cluster.spec import PoolSpec

CPUS_PER_GPU = 8  # host CPUs a pod asks for per GPU: tokenisation, detokenisation, the proxy, the router
HOST_MEMORY_PER_GPU_MEMORY = 1.5  # host RAM per GiB of GPU memory: weights are staged in RAM while loading
CPU_POOL_CPUS = 8
CPU_POOL_MEMORY_GIB = 32


@dataclass(frozen=True)
class InstanceType:
    """One AWS instance type: its name and vCPUs (what Ray's autoscaler must be told the node offers)."""

    name: str
    vcpus: int


# (accelerator, GPUs per node) -> AWS instance type. Accelerator names are compared in upper case.
AWS_INSTANCE_TYPES: dict[tuple[str, int], InstanceType] = {
    ("L4", 1): InstanceType("g6.xlarge", 4),
    ("L4", 4): InstanceType("g6.12xlarge", 48),
    ("L4", 8): InstanceType("g6.48xlarge", 192),
    ("A10G", 1): InstanceType("g5.xlarge", 4),
    ("A10G", 4): InstanceType("g5.12xlarge", 48),
    ("A10G", 8): InstanceType("g5.48xlarge", 192),
    ("L40S", 1): InstanceType("g6e.xlarge", 4),
    ("L40S", 4): InstanceType("g6e.12xlarge", 48),
    ("L40S", 8): InstanceType("g6e.48xlarge", 192),
    ("A100", 8): InstanceType("p4de.24xlarge", 96),
    ("H100", 8): InstanceType("p5.48xlarge", 192),
    ("H200", 8): InstanceType("p5en.48xlarge", 192),
    ("CPU", 0): InstanceType("m6i.8xlarge", 32),
}
AWS_HEAD_INSTANCE = InstanceType("m6i.2xlarge", 8)


def aws_instance(pool_name: str, pool: PoolSpec) -> InstanceType:
    """The instance type of a pool's nodes, or a :class:`RenderError` listing the covered combinations."""
    key = (pool.accelerator.upper(), pool.gpus_per_node)
    if key in AWS_INSTANCE_TYPES:
        return AWS_INSTANCE_TYPES[key]
    known = ", ".join(f"{acc} x{gpus}" for acc, gpus in AWS_INSTANCE_TYPES)
    raise RenderError(
        f"pools.{pool_name}: no AWS instance type known for {pool.accelerator} x{pool.gpus_per_node}; "
        f"known: {known} (add one to cluster/render/hardware.py:AWS_INSTANCE_TYPES)"
    )


def pod_cpus(pool: PoolSpec) -> int:
    """CPUs a worker pod of this pool asks for."""
    return pool.gpus_per_node * CPUS_PER_GPU if pool.gpus_per_node else CPU_POOL_CPUS


def pod_memory_gib(pool: PoolSpec) -> int:
    """Host memory (GiB) a worker pod of this pool asks for."""
    if not pool.gpus_per_node:
        return CPU_POOL_MEMORY_GIB
    return math.ceil(pool.gpus_per_node * pool.gpu_memory_gib * HOST_MEMORY_PER_GPU_MEMORY)
