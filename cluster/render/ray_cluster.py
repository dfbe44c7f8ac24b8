"""Spec + plan -> ``ray-cluster.yaml`` for the Ray cluster launcher (``ray up``) on AWS.

One node type per pool, instance types from :mod:`cluster.render.hardware`, min/max workers from the pool's node
bounds, and the same pool resources as the Kubernetes worker groups, so the same Serve config places replicas the
same way on both. The head declares no CPU and no GPU: it runs Ray's control plane and Serve's controller and
proxy, never a model replica. Code reaches the nodes as a file mount of the repository (``ray up`` is run from
its root) installed with pip; API keys come from ``slmfleet.env``, a file you create and never commit.
"""

from __future__ import annotations

from typing import Any

from cluster.deploy_options import node_resources
from cluster.placement import Plan
from cluster.render.common import APP_NAME, PYTHON_TAG, RAY_VERSION, SERVE_ENV, dump_yaml, header
from cluster.render.hardware import AWS_HEAD_INSTANCE, InstanceType, aws_instance
from cluster.spec import FleetSpec, PoolSpec

HEAD_NODE_TYPE = "head"
AWS_REGION = "us-west-2"
DOCKER_IMAGE = f"rayproject/ray:{RAY_VERSION}-{PYTHON_TAG}-gpu"
REMOTE_CODE_DIR = "~/slm-fleet"
ENV_FILE = "slmfleet.env"  # KEY=value lines (e.g. SLMFLEET_API_KEYS=...), synced to every node, read by ray start
RSYNC_EXCLUDE = (".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", "*.egg-info")
DISK_GIB = 500  # model weights are downloaded to the node


def build_ray_cluster(spec: FleetSpec, plan: Plan) -> dict[str, Any]:
    """The cluster launcher config as data (validated against ray/autoscaler/ray-schema.json in the tests)."""
    del plan  # node bounds come from the pools; the plan only decides what runs on them
    workers = {name: node_type(name, pool) for name, pool in spec.pools.items()}
    return {
        "cluster_name": APP_NAME,
        "max_workers": sum(pool.max_nodes for pool in spec.pools.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "provider": {"type": "aws", "region": AWS_REGION, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": DOCKER_IMAGE, "container_name": "ray_container", "pull_before_run": True},
        "available_node_types": {HEAD_NODE_TYPE: head_node_type(), **workers},
        "head_node_type": HEAD_NODE_TYPE,
        "file_mounts": {REMOTE_CODE_DIR: ".", f"~/{ENV_FILE}": f"./{ENV_FILE}"},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": list(RSYNC_EXCLUDE),
        "initialization_commands": [],
        "setup_commands": [f'pip install --quiet "{REMOTE_CODE_DIR.replace("~", "$HOME")}[gpu]"'],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"{_load_env()} ulimit -n 65536; ray start --head --port=6379 --object-manager-port=8076 "
            # the dashboard (and Serve's deploy API on it) stays on the head's loopback: reach it through
            # `ray dashboard ray-cluster.yaml` (an SSH tunnel), never from the network
            "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{_load_env()} ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076",
        ],
    }


def _load_env() -> str:
    """Export Serve's settings, then the variables of the env file (which may override them), into ``ray start``,
    whose workers (the router, the model replicas) inherit them."""
    serve_env = " ".join(f"{name}={value}" for name, value in SERVE_ENV.items())
    return f"export {serve_env}; set -a; . ~/{ENV_FILE}; set +a;"


def _node_config(instance: InstanceType) -> dict[str, Any]:
    return {
        "InstanceType": instance.name,
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": DISK_GIB, "VolumeType": "gp3"}}],
    }


def head_node_type() -> dict[str, Any]:
    """No CPU and no GPU for Ray's scheduler: nothing but the control plane and Serve's controller and proxy."""
    return {"resources": {"CPU": 0, "GPU": 0}, "node_config": _node_config(AWS_HEAD_INSTANCE)}


def node_type(name: str, pool: PoolSpec) -> dict[str, Any]:
    """One pool: its instance type, its GPUs and CPUs, its pool resource, its node-count bounds."""
    instance = aws_instance(name, pool)
    return {
        "min_workers": pool.min_nodes,
        "max_workers": pool.max_nodes,
        "resources": {"CPU": instance.vcpus, "GPU": pool.gpus_per_node, **node_resources(name)},
        "node_config": _node_config(instance),
    }


def ray_cluster_text(spec: FleetSpec, plan: Plan, source: str, command: str) -> str:
    """``ray-cluster.yaml`` with its generated-file header."""
    note = (
        f"AWS ({AWS_REGION}); instance types per accelerator: docs/deploy.md. Run `ray up` from the repository root\n"
        f"(the repository is file-mounted to {REMOTE_CODE_DIR}) after creating ./{ENV_FILE} (never commit it)."
    )
    return header(command, source, note) + dump_yaml(build_ray_cluster(spec, plan))
