"""The adapter registry: adapter specialists registered at runtime, kept in the fleet's shared store.

The registry, not a replica, is the source of truth. Entries live in the state actor's durable ``adapters``
namespace (``deployments/fleet_state.py``): every router replica reads the same ones, they survive router and model
replica restarts, ``slmfleet diff`` lists them and ``slmfleet apply`` never drops them. A request to an adapter
specialist carries the adapter's source and version to the model replica, which loads it on first use; so a replica
started later, or after a crash, serves every registered adapter without being told.

Each router replica merges the registry into the spec it serves (:func:`with_registered`): the spec wins a name
clash, and an entry that no longer fits the spec (its model removed, or without LoRA) is set aside with the reason
rather than breaking the router. Pure functions: tested without Ray.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cluster.spec import FleetSpec, SpecialistSpec

REGISTRY_NAMESPACE = "adapters"
REFRESH_S = 1.0  # how stale a router replica's copy of the registry may be before a request refreshes it


def registry_entry(specialist: SpecialistSpec, probe: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps for one registration (JSON): the specialist, its probe figures, and a one-line
    description for ``slmfleet diff``."""
    adapter = specialist.adapter
    where = adapter.label() if adapter else "no adapter"
    return {
        "specialist": specialist.model_dump(mode="json", exclude_defaults=True),
        "probe": probe,
        "description": f"adapter specialist on {specialist.model}: {where}",
    }


SPEC_OWNS_NAME = "the spec defines this name now, and the spec wins"


def misfit(spec: FleetSpec, name: str, specialist: SpecialistSpec) -> str | None:
    """Why a registered specialist cannot be served with ``spec`` (:data:`SPEC_OWNS_NAME` for a name clash), or
    None when it fits."""
    if name in spec.specialists or name in spec.models:
        return SPEC_OWNS_NAME
    model = spec.models.get(specialist.model)
    if model is None:
        return f"its model '{specialist.model}' is not in the spec"
    if specialist.adapter is None:
        return "it names no adapter"
    if model.lora is None:
        return f"its model '{specialist.model}' has no lora: section"
    return None


def registered_specialist(spec: FleetSpec, name: str, entry: Any) -> SpecialistSpec | str:
    """The stored entry's specialist if it is valid and fits ``spec``, else why not."""
    try:
        specialist = SpecialistSpec.model_validate(entry.get("specialist") if isinstance(entry, dict) else None)
    except ValidationError as exc:
        if name in spec.specialists or name in spec.models:
            return SPEC_OWNS_NAME
        return f"not a valid specialist: {exc.errors()[0].get('msg', 'invalid')}"
    return misfit(spec, name, specialist) or specialist


def with_registered(spec: FleetSpec, entries: dict[str, Any]) -> tuple[FleetSpec, dict[str, str]]:
    """``spec`` plus the registered specialists that fit it, and the reasons for those set aside."""
    added: dict[str, SpecialistSpec] = {}
    set_aside: dict[str, str] = {}
    for name, entry in sorted(entries.items()):
        found = registered_specialist(spec, name, entry)
        if isinstance(found, str):
            set_aside[name] = found
        else:
            added[name] = found
    if not added:
        return spec, set_aside
    return spec.model_copy(update={"specialists": {**spec.specialists, **added}}), set_aside
