"""``Idempotency-Key`` on pipeline runs: a client's retry returns the first run's result instead of re-running
its tools (which may have side effects: a refund issued twice).

The first request with a key claims it in the fleet's shared store (``put_if_absent``: one winner across every
router replica), runs, and stores its result under the key for ``ttl_s``. A repeat with the same key and the same
body gets that result back; one that arrives while the first still runs gets 409 (retry later); one with the same
key and a different body is a client error (422), never a silent re-run. A run that raised (no result) releases
its claim so a retry can run. When the store cannot be reached, the run is refused with 503 rather than risk
running twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from deployments.router.openai_api import error_body

log = logging.getLogger(__name__)
NAMESPACE = "idempotency"
HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
DEFAULT_TTL_S = 24 * 3600.0


class SharedStore(Protocol):
    """The part of the fleet's shared store (``deployments.fleet_state.FleetState``) this needs."""

    async def put_if_absent(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> tuple[bool, Any]: ...

    async def put(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> None: ...

    async def delete(self, ns: str, key: str) -> bool: ...


@dataclass(frozen=True)
class Replay:
    """What a keyed request gets instead of a run: an HTTP status and body (``replayed``: the first run's)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class IdempotentRuns:
    """Runs pipelines at most once per ``(pipeline, Idempotency-Key)``."""

    def __init__(self, store: SharedStore | None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store, self.ttl_s = store, ttl_s

    async def run(
        self, pipeline: str, key: str, inputs: dict[str, Any], execute: Callable[[], Awaitable[dict[str, Any]]]
    ) -> Replay:
        """The run's result (200), the stored result of an earlier run with this key, or why neither."""
        if not key or len(key) > MAX_KEY_CHARS:
            return Replay(400, _error(f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters", "invalid_idempotency_key"))
        if self.store is None:
            return Replay(503, _error("idempotency keys need the fleet's shared store, which is not connected"))
        slot, fingerprint = _slot(pipeline, key), _fingerprint(inputs)
        try:
            claimed, current = await self.store.put_if_absent(
                NAMESPACE, slot, {"state": "running", "fingerprint": fingerprint}, self.ttl_s
            )
        except Exception as exc:
            log.warning("idempotency store unreachable: %r", exc)
            return Replay(503, _error("the idempotency store did not answer; the run was not started"))
        if not claimed:
            return _earlier(current, fingerprint)
        return await self._execute(slot, fingerprint, execute)

    async def _execute(self, slot: str, fingerprint: str, execute: Callable[[], Awaitable[dict[str, Any]]]) -> Replay:
        try:
            result = await execute()
        except BaseException:
            await self._release(slot)
            raise
        try:
            done = {"state": "done", "fingerprint": fingerprint, "result": result}
            await self.store.put(NAMESPACE, slot, done, self.ttl_s)  # type: ignore[union-attr]
        except Exception as exc:  # the run happened: answer it; a retry then finds the key still "running"
            log.warning("idempotency result not stored: %r", exc)
        return Replay(200, result)

    async def _release(self, slot: str) -> None:
        try:
            await self.store.delete(NAMESPACE, slot)  # type: ignore[union-attr]
        except Exception as exc:
            log.warning("idempotency claim not released: %r", exc)


def _earlier(current: Any, fingerprint: str) -> Replay:
    if not isinstance(current, dict) or current.get("fingerprint") != fingerprint:
        return Replay(
            422,
            _error(f"this {HEADER} was used with a different request body; use a new key", "idempotency_key_reused"),
        )
    if current.get("state") != "done":
        return Replay(409, _error(f"a run with this {HEADER} is still in progress; retry later", "run_in_progress"))
    return Replay(200, current["result"], replayed=True)


def _slot(pipeline: str, key: str) -> str:
    """The store key: a hash, so any client key fits the store's key rules and none is kept in the clear."""
    return hashlib.sha256(f"{pipeline}\0{key}".encode()).hexdigest()[:40]


def _fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _error(message: str, code: str = "idempotency_unavailable") -> dict[str, Any]:
    err_type = "server_error" if code == "idempotency_unavailable" else "invalid_request_error"
    return error_body(message, err_type, code, HEADER)
