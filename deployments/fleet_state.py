"""The one store every router replica reads: idempotency results, quotas, the LLM-tier budget, adapters, promotions.

Router replicas (two or more per fleet) must agree on this state, so it lives in one named, detached Ray actor,
``slmfleet-state`` in the Ray namespace ``slmfleet``: no new dependency, already in the cluster, found by name from
any replica or driver. Why an actor:

- One writer. The actor is synchronous with ``max_concurrency=1``: it runs one call at a time, so ``consume`` and
  ``put_if_absent`` are atomic read-modify-writes without a lock, however many replicas call at once.
- Ordering per caller. Ray runs a caller's calls to a single-threaded actor in the order it submitted them (calls
  from different callers interleave in no promised order). The exception is a retry: the actor is created with
  ``max_task_retries=-1``, so a call in flight when the actor dies is run again on the restarted actor
  (at-least-once, possibly out of order with later calls; a retried ``put_if_absent`` whose first run was persisted
  answers ``(False, <its own value>)``, so callers compare the value, not only the flag).
- What survives what. A router replica restart, a replica scale-down and ``serve deploy`` touch Serve's actors
  only: this detached actor keeps everything. An actor restart (its process crashed or was killed; it restarts
  without limit) re-runs the constructor, which keeps only the durable namespaces, reloaded from the snapshot file
  when one is configured; idempotency results, quota windows and the budget start empty. The actor is pinned to
  the head node (as Serve pins its controller), so a snapshot path on the head's volume is always the same file
  and the autoscaler never removes the actor's node. Losing the head node loses the whole actor, and every
  namespace with it, unless GCS fault tolerance is on (an external Redis): then Ray restarts the actor when the
  head returns and the durable namespaces come back from the snapshot, if the path is a persistent volume.

Namespaces (the key space is open; these are the ones the router uses):

- ``idempotency``: a request's Idempotency-Key -> its stored result, with a TTL; ``put_if_absent`` picks one winner.
- ``key_quota``: per-key request counters, fixed windows (``consume``).
- ``key_concurrency``: per-key requests in flight, expiring leases (``acquire``/``release``).
- ``budget``: the LLM tier's spend counter, fixed windows (``consume``).
- ``adapters`` (durable): the LoRA adapter registry, registered at runtime.
- ``promotions`` (durable): promotions decided at runtime by the conversion loop.

The durable namespaces are runtime registrations the spec does not hold: ``slmfleet diff`` shows them and
``slmfleet apply`` keeps them. They hold JSON values only and never expire; every write to one rewrites the snapshot
file atomically. Writes elsewhere never touch the disk.

:class:`FleetStateCore` is the pure logic (no Ray, an injectable clock); :class:`FleetStateActor` wraps it as the
actor; :func:`fleet_state` gets or creates the actor; :class:`FleetState` is the router's awaitable client;
:func:`read_runtime_state` is the CLI's synchronous read of the durable namespaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deployments.fleet_state_core import DURABLE_NAMESPACES, Consumed, FleetStateCore, Leased, check_number

if TYPE_CHECKING:
    from ray.actor import ActorHandle

logger = logging.getLogger(__name__)

STATE_ACTOR_NAME = "slmfleet-state"
STATE_NAMESPACE = "slmfleet"
# Ray's own resource on the head node; Serve's controller asks for it the same way (serve/_private/default_impl.py)
HEAD_NODE_RESOURCE = "node:__internal_head__"


class FleetStateActor:
    """The store as a Ray actor (made remote by :func:`fleet_state`): one process, one call at a time."""

    def __init__(self, snapshot_path: str | None = None) -> None:
        self._snapshot_path = snapshot_path
        self._core = FleetStateCore(snapshot_path)

    def get(self, ns: str, key: str) -> Any | None:
        return self._core.get(ns, key)

    def put(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        self._core.put(ns, key, value, ttl_s)

    def delete(self, ns: str, key: str) -> bool:
        return self._core.delete(ns, key)

    def items(self, ns: str) -> dict[str, Any]:
        return self._core.items(ns)

    def put_if_absent(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> tuple[bool, Any]:
        return self._core.put_if_absent(ns, key, value, ttl_s)

    def consume(self, ns: str, key: str, amount: float, limit: float, window_s: float) -> Consumed:
        return self._core.consume(ns, key, amount, limit, window_s)

    def acquire(self, ns: str, key: str, limit: int, ttl_s: float) -> Leased:
        return self._core.acquire(ns, key, limit, ttl_s)

    def release(self, ns: str, key: str, lease_id: str) -> bool:
        return self._core.release(ns, key, lease_id)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._core.snapshot()

    def describe(self) -> dict[str, Any]:
        """Which process holds the state, where it persists, how big it is: for operators and restart checks."""
        return {"pid": os.getpid(), "snapshot_path": self._snapshot_path, "entries": self._core.stats()}


def fleet_state(snapshot_path: str | None = None, *, name: str = STATE_ACTOR_NAME) -> ActorHandle:
    """The fleet's state actor, created on first use; every caller after that gets the same one.

    ``get_if_exists`` makes concurrent first calls from several replicas safe (Ray retries the lookup when it loses
    the creation race); an existing actor keeps the ``snapshot_path`` it was created with. Detached: it outlives
    its creator. ``max_restarts=-1``/``max_task_retries=-1``: it always comes back and calls in flight are re-run.
    ``num_cpus=0`` and a sliver of the head node's resource: it takes no CPU from replicas and lives on the head.
    """
    import ray

    return (
        ray.remote(FleetStateActor)
        .options(
            name=name,
            namespace=STATE_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=0,
            max_concurrency=1,
            resources={HEAD_NODE_RESOURCE: 0.001},
            enable_task_events=False,
        )
        .remote(snapshot_path)
    )


class FleetState:
    """The router's client of the state actor: every method awaits the actor's answer (never ``ray.get``).

    ``timeout_s`` bounds each call (asyncio.TimeoutError beyond it), so a request's deadline holds while the actor
    restarts; the caller decides whether to fail open or closed. Errors the store raises (ValueError for bad
    arguments) arrive as exceptions that are still instances of their original class.
    """

    def __init__(self, handle: ActorHandle, timeout_s: float | None = None) -> None:
        if timeout_s is not None:
            check_number("timeout_s", timeout_s, positive=True)
        self._handle = handle
        self._timeout_s = timeout_s

    @classmethod
    def connect(
        cls, snapshot_path: str | None = None, *, name: str = STATE_ACTOR_NAME, timeout_s: float | None = None
    ) -> FleetState:
        """A client of the fleet's state actor, creating the actor on first use (see :func:`fleet_state`)."""
        return cls(fleet_state(snapshot_path, name=name), timeout_s)

    async def _call(self, method: str, *args: Any) -> Any:
        ref = getattr(self._handle, method).remote(*args)
        if self._timeout_s is None:
            return await ref
        return await asyncio.wait_for(ref, self._timeout_s)

    async def get(self, ns: str, key: str) -> Any | None:
        """See :meth:`FleetStateCore.get`."""
        return await self._call("get", ns, key)

    async def put(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        """See :meth:`FleetStateCore.put`."""
        await self._call("put", ns, key, value, ttl_s)

    async def delete(self, ns: str, key: str) -> bool:
        """See :meth:`FleetStateCore.delete`."""
        return await self._call("delete", ns, key)

    async def items(self, ns: str) -> dict[str, Any]:
        """See :meth:`FleetStateCore.items`."""
        return await self._call("items", ns)

    async def put_if_absent(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> tuple[bool, Any]:
        """See :meth:`FleetStateCore.put_if_absent`."""
        stored, current = await self._call("put_if_absent", ns, key, value, ttl_s)
        return stored, current

    async def consume(self, ns: str, key: str, amount: float, limit: float, window_s: float) -> Consumed:
        """See :meth:`FleetStateCore.consume`."""
        return await self._call("consume", ns, key, amount, limit, window_s)

    async def acquire(self, ns: str, key: str, limit: int, ttl_s: float) -> Leased:
        """See :meth:`FleetStateCore.acquire`."""
        return await self._call("acquire", ns, key, limit, ttl_s)

    async def release(self, ns: str, key: str, lease_id: str) -> bool:
        """See :meth:`FleetStateCore.release`."""
        return await self._call("release", ns, key, lease_id)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """See :meth:`FleetStateCore.snapshot`."""
        return await self._call("snapshot")

    async def describe(self) -> dict[str, Any]:
        """See :meth:`FleetStateActor.describe`."""
        return await self._call("describe")


def runtime_entries(state: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{"<namespace>:<key>": description}`` of the durable namespaces, as ``slmfleet diff`` lists them."""
    return {
        f"{ns}:{key}": _describe(value)
        for ns in sorted(state)
        if ns in DURABLE_NAMESPACES
        for key, value in sorted(state[ns].items())
    }


def _describe(value: Any) -> str:
    """A registration in a few words: its own ``description`` when it has one, a promotion's task and phase, else
    its JSON."""
    if isinstance(value, Mapping) and isinstance(value.get("description"), str):
        return value["description"]
    if isinstance(value, Mapping) and {"task", "specialist", "model", "phase"} <= value.keys():
        return f"'{value['specialist']}' takes {value['model']}'s '{value['task']}' calls ({value['phase']})"
    return json.dumps(value, sort_keys=True, default=str)


def read_runtime_state(
    address: str | None = None, *, name: str = STATE_ACTOR_NAME, timeout_s: float = 30.0
) -> dict[str, dict[str, Any]]:
    """The running fleet's durable namespaces (for ``slmfleet diff``), or ``{}`` when it has no state actor yet.

    Joins the cluster at ``address`` (Ray's usual discovery when None) unless this process is already a driver;
    looks the actor up without creating it, so reading never starts one.
    """
    import ray

    if not ray.is_initialized():
        from deployments.fleet_deploy import attach

        attach(address or "auto")
    try:
        handle = ray.get_actor(name, namespace=STATE_NAMESPACE)
    except ValueError:
        return {}
    return ray.get(handle.snapshot.remote(), timeout=timeout_s)
