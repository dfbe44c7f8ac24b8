"""A simulated multi-node Ray cluster on this machine: a head without GPUs and nodes with logical GPUs, each node
declaring its accelerator type and its pool's resource, as a real pool's nodes would; Serve without an HTTP proxy
(no port to collide on). Shared by the placement and autoscaling tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from cluster.deploy_options import node_resources

MIB = 1024**2
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


@contextlib.contextmanager
def simulated_cluster(nodes: Mapping[str, Mapping[str, Any]]) -> Iterator[Any]:
    """``nodes``: pool name -> ``{"num_cpus", "num_gpus", "accelerator"}``; yields the running ``Cluster``."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 128 * MIB}
    sim = Cluster(initialize_head=True, head_node_args={**head, "_system_config": NO_PRESTART})
    try:
        for pool, node in nodes.items():
            sim.add_node(
                num_cpus=node["num_cpus"],
                num_gpus=node["num_gpus"],
                resources={f"accelerator_type:{node['accelerator']}": 1, **node_resources(pool)},
                object_store_memory=128 * MIB,
            )
        sim.wait_for_nodes()
        ray.init(address=sim.address)
        serve.start(proxy_location="Disabled")
    except BaseException:
        sim.shutdown()
        raise
    try:
        yield sim
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            sim.shutdown()
