"""S6, the gate: a trained adapter is registered on the running fleet as the task's specialist (hot-loaded, no
restart; the router's probe refuses one that changes nothing), scored on the held-out slice beside its base model,
and kept only when it beats the base on agreement and reaches the LLM tier's contract validity. A failing adapter
is unregistered at once, so routing is as it was.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.convert.evaluate import Answer, Score, evaluate
from cluster.object_store import upload_file

GATE_FILE = "gate.json"


def adapter_version(folder: Path) -> str:
    """A version that changes whenever the adapter's files do (replicas cache adapters by source and version)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def publish_adapter(folder: Path, name: str, store: str | None) -> dict[str, str]:
    """The adapter's spec entry: its local folder, or a copy uploaded under ``store`` (s3:// or gs://) where the
    model replicas of a multi-node fleet can fetch it."""
    version = adapter_version(folder)
    if store is None:
        return {"source": str(folder.resolve()), "version": version}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        upload_file(path, store, f"{name}/{version}/{path.name}")
    return {"source": f"{store.rstrip('/')}/{name}/{version}", "version": version}


@dataclass
class AdminClient:
    """The fleet's adapter registry over HTTP (``/admin/adapters``; an admin-scoped key when the fleet has keys)."""

    url: str
    api_key: str | None = None
    timeout_s: float = 300.0

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        reply = httpx.put(f"{self.url}{path}", json=body, headers=self._headers(), timeout=self.timeout_s)
        if not reply.is_success:
            raise GateError(f"the fleet refused {path} ({reply.status_code}): {reply.text[:300]}")
        return reply.json()

    def register(self, name: str, specialist: dict[str, Any]) -> dict[str, Any]:
        return self._put(f"/admin/adapters/{name}", specialist)

    def promote(self, task: str, promotion: dict[str, Any]) -> dict[str, Any]:
        return self._put(f"/admin/promotions/{task}", promotion)

    def remove(self, name: str) -> None:
        import httpx

        httpx.delete(f"{self.url}/admin/adapters/{name}", headers=self._headers(), timeout=self.timeout_s)


class GateError(RuntimeError):
    """The fleet would not take the adapter (the message is its answer)."""


def passes(adapter: Score, base: Score, llm_validity: float) -> bool:
    """Better than its base on agreement, and as valid as the LLM tier was."""
    return adapter.agreement > base.agreement and adapter.validity >= llm_validity


def gate_adapter(
    admin: AdminClient,
    answerer: Callable[[str], Answer],
    decision: dict[str, Any],
    adapter: dict[str, str],
    held_out: list[dict[str, Any]],
) -> dict[str, Any]:
    """Register, score beside the base, keep or remove; the verdict with both scores."""
    name, base = decision["name"], decision["base_model"]
    contract = held_out[0].get("contract") if held_out else None
    specialist: dict[str, Any] = {
        "model": base,
        "description": f"grown by the conversion loop from task {decision['id']}",
        "adapter": adapter,
        "sampling": {"temperature": 0.0},
    }
    if contract:
        specialist["output"] = {k: v for k, v in contract.items() if v is not None}
    started = time.perf_counter()
    admin.register(name, specialist)  # the fleet loads and probes it on a replica before it answers
    hot_load_s = time.perf_counter() - started
    base_score = evaluate(answerer(base), held_out)
    adapter_score = evaluate(answerer(name), held_out)
    kept = passes(adapter_score, base_score, decision["llm_validity"])
    if not kept:
        admin.remove(name)
    return {
        "name": name,
        "kept": kept,
        "adapter": adapter,
        "base_model": base,
        "base": base_score.as_dict(),
        "adapter_score": adapter_score.as_dict(),
        "llm_validity": decision["llm_validity"],
        "hot_load_s": round(hot_load_s, 2),
    }
