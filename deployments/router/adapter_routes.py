"""Admin routes of the adapter registry (``admin`` scope, see the auth gate): list, register, remove.

``PUT /admin/adapters/{name}`` takes a specialist (``model``, ``adapter: {source, version}``, and the usual
instructions, output contract and sampling). Before it is stored, the adapter is loaded on one replica of its model
and probed (:mod:`cluster.adapter_probe`): an adapter the engine refuses (rank, shapes, missing files) or one that
does not move the model's log-probabilities is refused with 422 and the reason; nothing is stored then. A stored
registration reaches every router replica within :data:`REFRESH_S` and needs no engine restart or new replica.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from cluster.adapter_probe import probe_refusal
from cluster.spec import NAME_PATTERN, AdapterSpec, FleetSpec, SpecialistSpec
from deployments.router.adapter_registry import REFRESH_S, SPEC_OWNS_NAME, misfit, registry_entry
from deployments.router.openai_api import error_response

PROBE_TIMEOUT_S = 300.0  # a model at zero replicas is woken by the probe: its cold start must fit


@dataclass
class AdapterAdmin:
    """What the routes need from the router: the spec it was given, the spec it serves (the registry merged in),
    the registry's entries and those set aside, the store's writes, and a probe on a model's replica."""

    base_spec: Callable[[], FleetSpec]
    served_spec: Callable[[], FleetSpec]
    set_aside: Callable[[], dict[str, str]]
    entries: Callable[[], Awaitable[dict[str, Any]]]
    put: Callable[[str, dict[str, Any]], Awaitable[None]]
    delete: Callable[[str], Awaitable[bool]]
    probe: Callable[[str, AdapterSpec], Awaitable[dict[str, Any]]]
    refresh: Callable[[], Awaitable[None]]  # re-read the registry now (this replica serves the change at once)
    # a spec adapter's probe on this replica and why it is refused (None, None before its specialist's first call)
    spec_probe: Callable[[FleetSpec, str], tuple[dict[str, Any] | None, str | None]] = lambda *_: (None, None)


def add_adapter_routes(app: FastAPI, admin: AdapterAdmin) -> None:
    @app.get("/admin/adapters")
    async def list_adapters() -> dict[str, Any]:
        entries, base = await admin.entries(), admin.base_spec()
        data = [
            _spec_listing(name, s, *admin.spec_probe(base, name))
            if name in base.specialists
            else _listing(name, s, "runtime", entries.get(name, {}).get("probe"))
            for name, s in admin.served_spec().specialists.items()
            if s.adapter is not None
        ]
        data += [{"name": n, "origin": "runtime", "active": False, "reason": r} for n, r in admin.set_aside().items()]
        return {"object": "list", "data": data, "refresh_s": REFRESH_S}

    @app.put("/admin/adapters/{name}")
    async def register_adapter(name: str, body: SpecialistSpec) -> Response:
        base = admin.base_spec()
        refused = _refusal(name, body, base)
        if refused is not None:
            return refused
        assert body.adapter is not None  # checked by _refusal
        model = base.models[body.model]
        probe = await admin.probe(body.model, body.adapter)
        if probe.get("retry"):  # no replica answered, or the fetch failed on the way: nothing was decided
            return error_response(503, f"adapter not probed: {probe['error']}; try again", "probe_failed", None)
        reason = probe.get("error") or probe_refusal(float(probe["divergence"]), model.lora.probe_min_divergence)
        if reason:
            return error_response(422, f"adapter refused: {reason}", "adapter_refused", "adapter.source")
        existed = name in await admin.entries()
        await admin.put(name, registry_entry(body, probe))
        await admin.refresh()
        listing = _listing(name, body, "runtime", probe)
        return JSONResponse(listing, status_code=200 if existed else 201)

    @app.delete("/admin/adapters/{name}")
    async def remove_adapter(name: str) -> Response:
        if name in admin.base_spec().specialists:
            return error_response(409, f"'{name}' is defined in the spec; remove it there", "defined_in_spec", "name")
        if not await admin.delete(name):
            return error_response(404, f"no adapter registered as '{name}'", "adapter_not_found", "name")
        await admin.refresh()
        return JSONResponse({"name": name, "deleted": True})


def _refusal(name: str, body: SpecialistSpec, spec: FleetSpec) -> Response | None:
    """A 4xx for a registration that cannot fit the spec (name, model, LoRA), before any replica is asked."""
    if not re.match(NAME_PATTERN, name):
        return error_response(400, f"'{name}' is not a valid name ({NAME_PATTERN})", "invalid_name", "name")
    if body.adapter is None:
        return error_response(400, "a registration needs 'adapter': {source, version}", "missing_adapter", "adapter")
    reason = misfit(spec, name, body)
    if reason is not None:
        status = 409 if reason == SPEC_OWNS_NAME else 400
        return error_response(status, f"cannot register '{name}': {reason}", "adapter_not_registrable", "model")
    return None


def _spec_listing(
    name: str, specialist: SpecialistSpec, probe: dict[str, Any] | None, refused: str | None
) -> dict[str, Any]:
    """A spec adapter: probed on its specialist's first call at this replica (``probe`` null until then), inactive
    with the reason when the probe refused it."""
    listing = _listing(name, specialist, "spec", probe)
    if refused is not None:
        listing.update(active=False, reason=refused)
    return listing


def _listing(name: str, specialist: SpecialistSpec, origin: str, probe: dict[str, Any] | None) -> dict[str, Any]:
    adapter = specialist.adapter
    return {
        "name": name,
        "model": specialist.model,
        "source": adapter.source if adapter else None,
        "version": adapter.version if adapter else None,
        "origin": origin,
        "active": True,
        "probe": probe,
    }
