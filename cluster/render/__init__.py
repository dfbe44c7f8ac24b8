"""Deploy artifacts rendered from one fleet spec and its plan: a Serve config, KubeRay manifests, ray-cluster.yaml.

Pure functions of (spec, plan): no Ray, vLLM or torch import, deterministic output, so the committed ``k8s/`` and
``ray-cluster.yaml`` can be drift-checked against a fresh render.
"""

from __future__ import annotations

from pathlib import Path

from cluster.placement import plan_from_store
from cluster.render.common import RenderError, display_path, dump_yaml, header
from cluster.render.ray_cluster import build_ray_cluster, ray_cluster_text
from cluster.render.rayservice import build_rayservice, k8s_files, network_policy, state_volume
from cluster.render.serve_config import build_serve_config, serve_config_text
from cluster.spec import load_spec

KINDS = ("serve", "k8s", "ray-cluster")

__all__ = [
    "RenderError",
    "build_ray_cluster",
    "build_rayservice",
    "build_serve_config",
    "display_path",
    "dump_yaml",
    "header",
    "k8s_files",
    "network_policy",
    "ray_cluster_text",
    "render_files",
    "serve_config_text",
    "state_volume",
]


def render_files(kind: str, spec_path: str, output: str | None) -> dict[Path | None, str]:
    """What ``slmfleet render KIND SPEC [-o OUTPUT]`` writes: path -> text (``None``: standard output).

    ``k8s`` writes a directory (default ``k8s``). Headers name the spec and the command as given relative to
    the working directory, so rendering from the repository root reproduces the committed files exactly.
    """
    if kind not in KINDS:
        raise RenderError(f"unknown render kind {kind!r}; use one of {', '.join(KINDS)}")
    spec = load_spec(spec_path)
    plan = plan_from_store(spec)
    output = output or ("k8s" if kind == "k8s" else None)
    source = display_path(spec_path)
    command = f"slmfleet render {kind} {source}" + (f" -o {display_path(output)}" if output else "")
    if kind == "k8s":
        folder = Path(output or "k8s")
        return {folder / name: text for name, text in k8s_files(spec, plan, source, command).items()}
    render = serve_config_text if kind == "serve" else ray_cluster_text
    return {Path(output) if output else None: render(spec, plan, source, command)}
