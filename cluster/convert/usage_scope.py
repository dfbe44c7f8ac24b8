"""Which model calls the usage log records, and where it is written: pure functions of the spec.

A call is recorded when it was served by an LLM-tier model and something on its path opted in with ``log_usage``:
the model itself, the specialist it was made for, the pipeline it ran in, or the model it was escalated from (an
SLM opting in has its escalated steps recorded, each with its reason).
"""

from __future__ import annotations

from pathlib import Path

from cluster.model_store import slmfleet_home
from cluster.spec import FleetSpec, UsageLogSpec


def is_logged(
    spec: FleetSpec, model: str, specialist: str | None, pipeline: str | None, escalated_from: str | None
) -> bool:
    """Whether a call answered by ``model`` belongs in the usage log."""
    served = spec.models.get(model)
    if spec.usage_log is None or served is None or served.tier != "llm":
        return False
    opted = [
        served,
        spec.specialists.get(specialist or ""),
        spec.pipelines.get(pipeline or ""),
        spec.models.get(escalated_from or ""),
    ]
    return any(part is not None and part.log_usage for part in opted)


def log_destination(settings: UsageLogSpec, home: Path | None = None) -> str:
    """The log's folder or object-store URI: the spec's, else ``$SLMFLEET_HOME/usage-log`` on the node."""
    if settings.destination is None:
        return str((home or slmfleet_home()) / "usage-log")
    return settings.destination.removeprefix("file://")


def is_object_store(destination: str) -> bool:
    return destination.startswith(("s3://", "gs://"))
