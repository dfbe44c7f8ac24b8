"""Shared pieces of the renderers: app and deployment names, Serve's environment, headers and YAML output.

Everything rendered must be byte-for-byte reproducible (the committed ``k8s/`` and ``ray-cluster.yaml`` are
drift-checked), so YAML is written with insertion-ordered keys built in a fixed order, no anchors, and block
literals for multi-line strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Names of the Serve apps and their deployments; deployments/app.py imports them from here (`cluster` never
# imports `deployments`), so the rendered configs and the app builder cannot disagree. The router is the app
# named APP_NAME; every model is an app of its own, named like its one deployment.
APP_NAME = "slmfleet"
ROUTER_IMPORT_PATH = "deployments.app:router_app"
MODEL_IMPORT_PATH = "deployments.app:model_app"
ROUTER_DEPLOYMENT = "router"
ROUTER_NUM_CPUS = 0.5
HEALTH_CHECK_PERIOD_S = 5
HEALTH_CHECK_TIMEOUT_S = 30

# Environment of every Ray process of a fleet (the KubeRay containers, `ray up` nodes, and `slmfleet up`):
# - compact scheduling: Serve packs replicas onto few nodes like the plan does, instead of spreading them
#   (docs/placement.md);
# - the handle-path settings of Serve's throughput-optimized mode: gRPC between replicas, user code and handle
#   routers on the replica's own event loop. benchmarks/pipeline_overhead.py measured them cutting the time around
#   each model call from 5.9 to 3.7 ms at p50 (docs/architecture.md); the e2e tier passes with them.
SERVE_ENV = {
    "RAY_SERVE_USE_COMPACT_SCHEDULING_STRATEGY": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}

STATE_PATH_ENV = "SLMFLEET_STATE_PATH"
"""Where the fleet's state actor snapshots its durable namespaces (adapter registry, promotions); read by the router
replica that creates the actor (``deployments/fleet_state.py``), so renders set it on every Ray container."""

RAY_VERSION = "2.60.0"
PYTHON_TAG = "py311"


class RenderError(ValueError):
    """A spec the renderers cannot express (e.g. an accelerator with no known instance type)."""


def model_deployment_name(model: str) -> str:
    """The name of a model's deployment, and of the Serve app that holds only it."""
    return f"model-{model}"


def display_path(path: str | Path) -> str:
    """The spec path as written in headers: relative to the working directory when inside it, so renders of
    the same file from the repository root are identical on every machine."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def header(command: str, source: str, note: str = "") -> str:
    """The comment at the top of every generated file: where it came from and how to regenerate it."""
    lines = [
        f"# GENERATED FILE, do not edit by hand. Source: {source}",
        f"# Re-render after changing the spec: {command}  (tests/unit/test_render.py checks for drift)",
    ]
    if note:
        lines.extend(f"# {line}" if line else "#" for line in note.splitlines())
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors (shared dicts would become ``&id001``) and with block literals for text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """YAML text with keys in the order the renderer built them."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


def dump_documents(documents: list[Any]) -> str:
    """Several YAML documents in one file, separated by ``---``."""
    return "---\n".join(dump_yaml(doc) for doc in documents)
