"""Adapters named in the spec, probed as runtime registrations are before they are stored.

A LoRA adapter that does not change the model (saved before training with peft's default init, or aimed at modules
the model lacks) loads without a word and serves the base model's answers under the specialist's name: the classic
silent failure. ``validate`` can check a spec adapter's files, but only a replica can measure its effect, so each
router replica probes a spec adapter on its specialist's first call (which wakes the model anyway, where a probe
at start-up would wake a model that scaled to zero) and keeps the verdict per adapter source and version. A refused
adapter's specialist answers 503 ``adapter_refused`` with the reason (escalated where its policy allows, as an
unavailable model is); a probe that could not run (no replica answered) is not kept, and the call goes ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.adapter_probe import probe_refusal
from cluster.spec import AdapterSpec, FleetSpec
from deployments.model.adapters import adapter_key

Probe = Callable[[str, AdapterSpec], Awaitable[dict[str, Any]]]
"""Loads an adapter on one replica of a model and measures it: ``{"divergence", ...}``, ``{"error"}`` when the
engine refused it, or ``{"error", "retry": True}`` when no replica answered."""


class SpecAdapterProbes:
    """One router replica's probe verdicts on spec adapters, kept across reconfigures (keyed by source@version, so
    a new version is probed again)."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def kept(self, spec: FleetSpec, specialist: str) -> tuple[dict[str, Any] | None, str | None]:
        """The kept probe of a spec specialist's adapter and the reason it is refused (None, None before its first
        call)."""
        adapter = spec.specialists[specialist].adapter
        result = self.results.get(adapter_key(adapter)) if adapter is not None else None
        return result, None if result is None else _reason(spec, specialist, result)

    async def refusal(self, spec: FleetSpec, probe: Probe, specialist: str | None, model: str) -> str | None:
        """Why ``specialist`` of ``spec`` may not be served on ``model`` (its adapter was refused by the engine, or
        moves the model less than ``lora.probe_min_divergence``); None when it passed, when the probe could not
        run, when the specialist is not the spec's (a runtime registration was probed before it was stored), or
        when ``model`` is not the specialist's own (an escalated call: the adapter is not applied there)."""
        own = spec.specialists.get(specialist) if specialist else None
        if own is None or own.adapter is None or own.model != model:
            return None
        result = await self._probed(own.model, own.adapter, probe)
        return None if result is None else _reason(spec, str(specialist), result)

    async def _probed(self, model: str, adapter: AdapterSpec, probe: Probe) -> dict[str, Any] | None:
        """The adapter's probe, run once however many calls arrive together; None when it could not run."""
        key = adapter_key(adapter)
        if key in self.results:
            return self.results[key]
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(probe(model, adapter))
            running.add_done_callback(lambda _: self._running.pop(key, None))
        result = await asyncio.shield(running)
        if result.get("retry"):
            return None
        self.results[key] = result
        return result


def _reason(spec: FleetSpec, specialist: str, result: dict[str, Any]) -> str | None:
    """The engine's refusal, or a divergence under the model's threshold (as for a runtime registration)."""
    lora = spec.models[spec.specialists[specialist].model].lora
    threshold = lora.probe_min_divergence if lora is not None else 0.0
    return result.get("error") or probe_refusal(float(result["divergence"]), threshold)
