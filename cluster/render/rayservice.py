"""Spec + plan -> the ``k8s/`` directory: a KubeRay RayService, its NetworkPolicy, the fleet state's volume claim
and a kustomization.

- The head pod serves no models: ``num-cpus: "0"`` and ``num-gpus: "0"`` leave only Serve's controller and proxy
  (which ask for no CPU) there. Each pool is one worker group pinned to its nodes by the ``slmfleet.io/pool`` node
  label, tolerating the NVIDIA taint, declaring its GPUs and the pool resource of
  :func:`cluster.deploy_options.node_resources`, so replicas land only where the plan put them.
- Clients reach the fleet through the RayService's ``serveService`` (named after the app): KubeRay points it at the
  cluster whose Serve applications are ready, which is what makes upgrades drop no traffic.
- API keys come from a Secret the user creates (see :data:`API_KEYS_SECRET`); nothing secret is rendered.
- The fleet's durable state (registered adapters, promotions) is snapshot by the state actor, which lives on the
  head node, to a file on the claim :data:`STATE_CLAIM` that the head pod mounts; every container names the file
  (``SLMFLEET_STATE_PATH``), since the router replica that creates the actor tells it where to write.
- Pods are selected by ``slmfleet.io/fleet``: KubeRay's ``ray.io/cluster`` label carries a generated name that
  changes with every cluster upgrade, and it overwrites ``app.kubernetes.io/name`` on Ray pods.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cluster.deploy_options import node_resources
from cluster.placement import Plan
from cluster.render.common import (
    APP_NAME,
    PYTHON_TAG,
    RAY_VERSION,
    SERVE_ENV,
    STATE_PATH_ENV,
    RenderError,
    dump_documents,
    dump_yaml,
    header,
)
from cluster.render.hardware import pod_cpus, pod_memory_gib
from cluster.render.serve_config import build_serve_config
from cluster.spec import FleetSpec, PoolSpec

IMAGE = "slmfleet"  # placeholder name: a kustomize overlay's `images:` maps it to the image you build and push
IMAGE_TAG = f"ray{RAY_VERSION}-{PYTHON_TAG}-gpu"
FLEET_LABEL = "slmfleet.io/fleet"
POOL_LABEL = "slmfleet.io/pool"  # node label of every node of a pool, and pod label of its workers
ROLE_LABEL = "slmfleet.io/role"
API_KEYS_SECRET = "slmfleet-api-keys"
API_KEYS_SECRET_KEY = "api-keys"
HF_TOKEN_SECRET = "slmfleet-hf-token"  # optional: gated hub models (Llama) need a Hugging Face token
HF_TOKEN_SECRET_KEY = "token"
ENDPOINT_KEYS_SECRET = "slmfleet-endpoint-keys"  # outside APIs' keys, one Secret key per api_key_env variable
NVIDIA_GPU = "nvidia.com/gpu"
HEAD_CPUS = 4
HEAD_MEMORY = "16Gi"
SERVE_PORT_NAME = "serve"
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
OPERATOR_POD_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}  # KubeRay's Helm chart
STATE_CLAIM = "slmfleet-state"  # the head's volume for the fleet's durable state (adapter registry, promotions)
STATE_MOUNT = "/var/lib/slmfleet"
STATE_FILE = f"{STATE_MOUNT}/state.json"
STATE_SIZE = "1Gi"
FILES = ("rayservice.yaml", "networkpolicy.yaml", "state-volume.yaml", "kustomization.yaml")


def check_exposable(spec: FleetSpec) -> None:
    """A Kubernetes Service reaches the proxy from other pods: it must listen on all interfaces, behind keys."""
    if spec.server.host not in ("0.0.0.0", "::"):
        raise RenderError(
            f"server.host is {spec.server.host!r}: on Kubernetes the Serve proxy must listen on 0.0.0.0 "
            "so the Service can reach it; set server.host: 0.0.0.0"
        )
    if not spec.server.api_keys_env:
        raise RenderError(
            "server.api_keys_env is not set: a Kubernetes Service is reachable beyond this pod, so the router "
            "needs API keys; set server.api_keys_env (e.g. SLMFLEET_API_KEYS)"
        )


def container_env(spec: FleetSpec) -> list[dict[str, Any]]:
    """Environment of every Ray container: Serve's settings, the API keys from the Secret, the optional HF token,
    and the keys of outside APIs (``models.<name>.endpoint.api_key_env``) from their Secret, one key per variable."""
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in SERVE_ENV.items()]
    # the router replica that creates the state actor passes it this path; the actor lives on the head, which mounts it
    env.append({"name": STATE_PATH_ENV, "value": STATE_FILE})
    if spec.server.api_keys_env:
        env.append(_secret_env(spec.server.api_keys_env, API_KEYS_SECRET, API_KEYS_SECRET_KEY, optional=False))
    env.append(_secret_env("HF_TOKEN", HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, optional=True))
    for variable in endpoint_key_variables(spec):
        env.append(_secret_env(variable, ENDPOINT_KEYS_SECRET, variable, optional=False))  # an outside API's key
    return env


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


ENDPOINT_SWITCH_MARGIN_S = 30
"""Time for the Service's endpoints to move to the new cluster everywhere (kube-proxy, load balancers) before the
old cluster's last request starts its clock."""


def upgrade_drain_s(spec: FleetSpec) -> int:
    """How long KubeRay keeps the old cluster after a ``NewCluster`` upgrade switched traffic away from it (its
    default, 60 s, would cut a stream allowed ``stream_timeout_s``): the longest request or stream the router allows,
    plus :data:`ENDPOINT_SWITCH_MARGIN_S`."""
    longest = max(spec.server.request_timeout_s, spec.server.stream_timeout_s)
    return math.ceil(longest) + ENDPOINT_SWITCH_MARGIN_S


def build_rayservice(spec: FleetSpec, plan: Plan) -> dict[str, Any]:
    """The RayService custom resource (ray.io/v1)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": APP_NAME, "labels": {FLEET_LABEL: APP_NAME}},
        "spec": {
            # A cluster-level change (pods, groups) starts a second cluster and switches traffic once it serves.
            "upgradeStrategy": {"type": "NewCluster"},
            # ... and the old cluster lives on until its requests in flight could have finished
            "rayClusterDeletionDelaySeconds": upgrade_drain_s(spec),
            "serveService": serve_service(spec),
            "serveConfigV2": dump_yaml(build_serve_config(spec, plan)),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": head_group(spec),
                "workerGroupSpecs": [worker_group(spec, name, pool) for name, pool in spec.pools.items()],
            },
        },
    }


def serve_service(spec: FleetSpec) -> dict[str, Any]:
    """The client-facing Service; KubeRay sets its selector to the ready cluster's serving pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP_NAME, "labels": {FLEET_LABEL: APP_NAME}},
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {"name": SERVE_PORT_NAME, "port": spec.server.port, "targetPort": spec.server.port, "protocol": "TCP"}
            ],
        },
    }


def head_group(spec: FleetSpec) -> dict[str, Any]:
    """Head pod: GCS, dashboard, autoscaler, Serve controller and a proxy; no model replica can fit on it."""
    ports = [{"name": name, "containerPort": port} for name, port in RAY_PORTS.items()]
    ports.append({"name": SERVE_PORT_NAME, "containerPort": spec.server.port})
    resources = {"cpu": str(HEAD_CPUS), "memory": HEAD_MEMORY}
    container = {
        "name": "ray-head",
        "image": f"{IMAGE}:{IMAGE_TAG}",
        "ports": ports,
        "env": container_env(spec),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [{"name": "fleet-state", "mountPath": STATE_MOUNT}],
    }
    volume = {"name": "fleet-state", "persistentVolumeClaim": {"claimName": STATE_CLAIM}}
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
        "template": {
            "metadata": {"labels": {FLEET_LABEL: APP_NAME, ROLE_LABEL: "head"}},
            "spec": {"containers": [container], "volumes": [volume]},
        },
    }


def ray_start_resources(pool_name: str) -> str:
    """``rayStartParams.resources``: JSON in single quotes, as it is pasted into the ``ray start`` shell line."""
    return "'" + json.dumps(node_resources(pool_name), sort_keys=True) + "'"


def worker_group(spec: FleetSpec, name: str, pool: PoolSpec) -> dict[str, Any]:
    """One worker group per pool: its nodes only, its GPUs, its pool resource, its node-count bounds."""
    resources: dict[str, str] = {"cpu": str(pod_cpus(pool)), "memory": f"{pod_memory_gib(pool)}Gi"}
    pod_spec: dict[str, Any] = {"nodeSelector": {POOL_LABEL: name}}
    if pool.gpus_per_node:
        resources[NVIDIA_GPU] = str(pool.gpus_per_node)
        pod_spec["tolerations"] = [{"key": NVIDIA_GPU, "operator": "Exists", "effect": "NoSchedule"}]
    container = {
        "name": "ray-worker",
        "image": f"{IMAGE}:{IMAGE_TAG}",
        "env": container_env(spec),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    pod_spec["containers"] = [container]
    return {
        "groupName": name,
        "replicas": pool.min_nodes,
        "minReplicas": pool.min_nodes,
        "maxReplicas": pool.max_nodes,
        "rayStartParams": {"num-gpus": str(pool.gpus_per_node), "resources": ray_start_resources(name)},
        "template": {
            "metadata": {"labels": {FLEET_LABEL: APP_NAME, ROLE_LABEL: "worker", POOL_LABEL: name}},
            "spec": pod_spec,
        },
    }


def network_policy(spec: FleetSpec) -> dict[str, Any]:
    """Clients may reach the Serve port only; Ray's own ports (GCS, dashboard, client, object transfer) stay
    between the fleet's pods, plus the dashboard for the KubeRay operator, which deploys Serve through it."""
    fleet_pods = {"podSelector": {"matchLabels": {FLEET_LABEL: APP_NAME}}}
    operator = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{APP_NAME}-ray", "labels": {FLEET_LABEL: APP_NAME}},
        "spec": {
            "podSelector": {"matchLabels": {FLEET_LABEL: APP_NAME}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [fleet_pods]},
                {"from": [operator], "ports": [{"protocol": "TCP", "port": RAY_PORTS["dashboard"]}]},
                {"ports": [{"protocol": "TCP", "port": spec.server.port}]},
            ],
        },
    }


def state_volume() -> dict[str, Any]:
    """The claim the head pod mounts for the state actor's snapshot, so registered adapters and promotions outlive
    the head pod. ReadWriteMany: during a NewCluster upgrade the old and the new head pod hold it at once (with
    ReadWriteOnce on two nodes the new head would wait Pending and the upgrade never finish)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": STATE_CLAIM, "labels": {FLEET_LABEL: APP_NAME}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": STATE_SIZE}}},
    }


def kustomization() -> dict[str, Any]:
    """``kubectl apply -k k8s/`` applies both manifests; an overlay sets the image and namespace (docs/deploy.md)."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [name for name in FILES if name != "kustomization.yaml"],
    }


def endpoint_key_variables(spec: FleetSpec) -> list[str]:
    """The variables holding the keys of the outside APIs that serve the spec's endpoint models."""
    return sorted({e.api_key_env for e in spec.endpoint_models().values() if e.api_key_env})


def _endpoint_secret_note(spec: FleetSpec) -> str:
    variables = endpoint_key_variables(spec)
    if not variables:
        return ""
    literals = " ".join(f"--from-literal={v}=<key>" for v in variables)
    return f"and the outside APIs' keys:\n  kubectl create secret generic {ENDPOINT_KEYS_SECRET} {literals}\n"


def k8s_files(spec: FleetSpec, plan: Plan, source: str, command: str) -> dict[str, str]:
    """File name -> text of every file in ``k8s/``, each under a generated-file header."""
    check_exposable(spec)
    secret_note = (
        f"Before applying, create the API-key Secret (never commit keys):\n"
        f"  kubectl create secret generic {API_KEYS_SECRET} --from-literal={API_KEYS_SECRET_KEY}=<key1>,<key2>\n"
        f"{_endpoint_secret_note(spec)}"
        f"Image: {IMAGE}:{IMAGE_TAG} is a placeholder; set yours in a kustomize overlay (docs/deploy.md).\n"
        "Deploy: kubectl apply -k k8s/   (or your overlay)"
    )
    state_note = (
        "The cluster's default storage class must offer ReadWriteMany (NFS, EFS, Filestore), or set\n"
        "spec.storageClassName to one that does in an overlay (docs/deploy.md)."
    )
    return {
        "rayservice.yaml": header(command, source, secret_note) + dump_yaml(build_rayservice(spec, plan)),
        "networkpolicy.yaml": header(command, source) + dump_documents([network_policy(spec)]),
        "state-volume.yaml": header(command, source, state_note) + dump_yaml(state_volume()),
        "kustomization.yaml": header(command, source) + dump_yaml(kustomization()),
    }
