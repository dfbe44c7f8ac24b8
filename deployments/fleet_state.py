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
- ``quota``: per-key request/token counters, fixed windows (``consume``).
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
import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.actor import ActorHandle

logger = logging.getLogger(__name__)

STATE_PATH_ENV = "SLMFLEET_STATE_PATH"
"""Where the state actor snapshots the durable namespaces (a persistent volume in production); unset: memory only."""
STATE_ACTOR_NAME = "slmfleet-state"
STATE_NAMESPACE = "slmfleet"
DURABLE_NAMESPACES = frozenset({"adapters", "promotions"})
SNAPSHOT_FORMAT = 1
SWEEP_INTERVAL_S = 60.0
# Ray's own resource on the head node; Serve's controller asks for it the same way (serve/_private/default_impl.py)
HEAD_NODE_RESOURCE = "node:__internal_head__"
# relative slack when comparing float sums with a limit, so 0.1 + 0.2 fits a limit of 0.3
_FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class Consumed:
    """One ``consume`` answer: whether it was taken, the window's total after it, what is left, when to retry."""

    allowed: bool
    used: float
    remaining: float
    retry_after_s: float


@dataclass(slots=True)
class _Entry:
    value: Any
    expires_at: float | None


@dataclass(slots=True)
class _Window:
    ends_at: float
    used: float


def _check_name(arg: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{arg} must be a non-empty string, got {value!r}")


def _check_number(arg: str, value: object, *, positive: bool) -> None:
    """Finite, not negative (and not zero when ``positive``); bools are refused though Python counts them as ints."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{arg} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{arg} must be {'> 0' if positive else '>= 0'}, got {value!r}")


def _json_copy(ns: str, key: str, value: Any) -> Any:
    """``value`` as the snapshot file would give it back, or a ValueError naming ``ns/key``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value of {ns}/{key}: durable namespaces hold JSON values only ({exc})") from exc


def _parse_snapshot(data: object) -> dict[str, dict[str, Any]]:
    """A snapshot (``{namespace: {key: value}}``, durable namespaces only) checked and copied, or a ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"snapshot must map namespaces to entries, got {type(data).__name__}")
    parsed: dict[str, dict[str, Any]] = {}
    for ns, entries in data.items():
        if ns not in DURABLE_NAMESPACES:
            raise ValueError(f"snapshot namespace {ns!r} is not durable (durable: {sorted(DURABLE_NAMESPACES)})")
        if not isinstance(entries, Mapping):
            raise ValueError(f"snapshot namespace {ns!r} must map keys to values, got {type(entries).__name__}")
        for key in entries:
            _check_name(f"snapshot key in {ns!r}", key)
        parsed[ns] = {key: _json_copy(ns, key, value) for key, value in entries.items()}
    return parsed


class FleetStateCore:
    """Namespaced key/value with TTLs, put-if-absent and fixed-window counters: the store's logic, without Ray.

    ``snapshot_path`` makes the durable namespaces persistent: the file is loaded here when present (a corrupt one
    is renamed ``<path>.corrupt`` and the store starts empty; one that cannot be read at all, a permission error,
    raises: better no store than one silently without its registrations) and rewritten atomically on every durable
    write.
    ``snapshot`` restores from :meth:`snapshot`'s output instead of the file (and is written to the file, if any).
    """

    def __init__(
        self,
        snapshot_path: str | os.PathLike[str] | None = None,
        *,
        snapshot: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._path = Path(snapshot_path) if snapshot_path else None
        self._values: dict[str, dict[str, _Entry]] = {}
        self._windows: dict[str, dict[str, _Window]] = {}
        self._next_sweep = clock() + SWEEP_INTERVAL_S
        restored = _parse_snapshot(snapshot) if snapshot is not None else self._load_file()
        for ns, entries in restored.items():
            self._values[ns] = {key: _Entry(value, None) for key, value in entries.items()}
        if snapshot is not None:
            self._persist(self.snapshot())

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Mapping[str, Mapping[str, Any]],
        *,
        snapshot_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> FleetStateCore:
        """A store holding ``snapshot``'s durable namespaces (the other namespaces are never snapshotted)."""
        return cls(snapshot_path, snapshot=snapshot, clock=clock)

    # reads

    def get(self, ns: str, key: str) -> Any | None:
        """The live value under ``ns/key``, or None (an expired value is dropped here)."""
        _check_name("ns", ns)
        _check_name("key", key)
        entry = self._live_entry(ns, key, self._clock())
        return None if entry is None else entry.value

    def items(self, ns: str) -> dict[str, Any]:
        """Every live value of ``ns`` (expired ones are pruned, never returned); counters are not values."""
        _check_name("ns", ns)
        self._prune_values(ns, self._clock())
        return {key: entry.value for key, entry in self._values.get(ns, {}).items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The durable namespaces as ``{namespace: {key: value}}``: what the file holds and ``diff`` shows."""
        return {
            ns: {key: copy.deepcopy(entry.value) for key, entry in self._values.get(ns, {}).items()}
            for ns in sorted(DURABLE_NAMESPACES)
        }

    def stats(self) -> dict[str, int]:
        """Entries held per namespace (values and counters), after pruning what has expired: the store's size."""
        self._sweep(self._clock())
        counts: dict[str, int] = {}
        for table in (self._values, self._windows):
            for ns, entries in table.items():
                counts[ns] = counts.get(ns, 0) + len(entries)
        return counts

    # writes

    def put(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``ns/key``, replacing any; ``ttl_s`` bounds its life (not in durable namespaces)."""
        stored = self._checked_value(ns, key, value, ttl_s)
        now = self._clock()
        self._maybe_sweep(now)
        self._store(ns, key, _Entry(stored, None if ttl_s is None else now + ttl_s))

    def put_if_absent(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> tuple[bool, Any]:
        """(True, value) when stored; (False, the live value) when ``ns/key`` holds one: one winner per key."""
        stored = self._checked_value(ns, key, value, ttl_s)
        now = self._clock()
        self._maybe_sweep(now)
        existing = self._live_entry(ns, key, now)
        if existing is not None:
            return False, existing.value
        self._store(ns, key, _Entry(stored, None if ttl_s is None else now + ttl_s))
        return True, stored

    def delete(self, ns: str, key: str) -> bool:
        """Forget ``ns/key``, its value and its counter alike; True when there was a live one."""
        _check_name("ns", ns)
        _check_name("key", key)
        now = self._clock()
        had_value = self._live_entry(ns, key, now) is not None
        window = self._windows.get(ns, {}).pop(key, None)
        if had_value and ns in DURABLE_NAMESPACES:
            self._persist(self._snapshot_with(ns, {k: e for k, e in self._values[ns].items() if k != key}))
        if had_value:
            del self._values[ns][key]
        return had_value or (window is not None and window.ends_at > now)

    def consume(self, ns: str, key: str, amount: float, limit: float, window_s: float) -> Consumed:
        """Take ``amount`` from ``ns/key``'s fixed window (``limit`` per ``window_s``), or nothing if it does not fit.

        A window opens at the first consume after the last one ended. A refused consume takes nothing and says how
        long until the window resets (an ``amount`` above ``limit`` never fits). ``amount=0`` reads the counter.
        """
        self._check_counter(ns, key, amount, limit, window_s)
        now = self._clock()
        self._maybe_sweep(now)
        windows = self._windows.setdefault(ns, {})
        window = windows.get(key)
        if window is None or now >= window.ends_at:
            window = windows[key] = _Window(ends_at=now + window_s, used=0.0)
        if window.used + amount > limit + _FLOAT_SLACK * max(1.0, limit):
            return Consumed(False, window.used, max(limit - window.used, 0.0), window.ends_at - now)
        window.used += amount
        return Consumed(True, window.used, max(limit - window.used, 0.0), 0.0)

    # internals

    @staticmethod
    def _check_counter(ns: str, key: str, amount: float, limit: float, window_s: float) -> None:
        _check_name("ns", ns)
        _check_name("key", key)
        if ns in DURABLE_NAMESPACES:
            raise ValueError(f"ns {ns!r} is durable: counters live in non-durable namespaces (no disk on a hot path)")
        _check_number("amount", amount, positive=False)
        _check_number("limit", limit, positive=False)
        _check_number("window_s", window_s, positive=True)

    @staticmethod
    def _checked_value(ns: str, key: str, value: Any, ttl_s: float | None) -> Any:
        """The value to store: checked arguments, and in a durable namespace the value as JSON would reload it."""
        _check_name("ns", ns)
        _check_name("key", key)
        if ttl_s is not None:
            _check_number("ttl_s", ttl_s, positive=True)
        if ns not in DURABLE_NAMESPACES:
            return value
        if ttl_s is not None:
            raise ValueError(f"ttl_s must be None in durable namespace {ns!r}: its registrations do not expire")
        return _json_copy(ns, key, value)

    def _live_entry(self, ns: str, key: str, now: float) -> _Entry | None:
        entries = self._values.get(ns)
        if not entries:
            return None
        entry = entries.get(key)
        if entry is not None and entry.expires_at is not None and now >= entry.expires_at:
            del entries[key]
            return None
        return entry

    def _store(self, ns: str, key: str, entry: _Entry) -> None:
        """Write ``entry``; a durable namespace reaches the file first, so a failed write changes nothing."""
        if ns in DURABLE_NAMESPACES:
            self._persist(self._snapshot_with(ns, {**self._values.get(ns, {}), key: entry}))
        self._values.setdefault(ns, {})[key] = entry

    def _snapshot_with(self, ns: str, entries: Mapping[str, _Entry]) -> dict[str, dict[str, Any]]:
        durable = self.snapshot()
        durable[ns] = {key: entry.value for key, entry in entries.items()}
        return durable

    def _prune_values(self, ns: str, now: float) -> None:
        entries = self._values.get(ns)
        if entries:
            for key in [k for k, e in entries.items() if e.expires_at is not None and now >= e.expires_at]:
                del entries[key]

    def _maybe_sweep(self, now: float) -> None:
        """Drop expired values and ended windows at most once a ``SWEEP_INTERVAL_S``: keys nobody reads again."""
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for ns in list(self._values):
            self._prune_values(ns, now)
        for windows in self._windows.values():
            for key in [k for k, w in windows.items() if now >= w.ends_at]:
                del windows[key]
        self._next_sweep = now + SWEEP_INTERVAL_S

    def _load_file(self) -> dict[str, dict[str, Any]]:
        """The snapshot file's namespaces; a file that does not parse is kept aside as ``.corrupt`` and ignored."""
        if self._path is None or not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"not a format-{SNAPSHOT_FORMAT} fleet state snapshot")
            return _parse_snapshot(data.get("namespaces"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            corrupt = self._path.with_name(self._path.name + ".corrupt")
            os.replace(self._path, corrupt)
            logger.warning(
                "fleet state snapshot %s is unreadable (%s): starting empty, kept as %s", self._path, exc, corrupt
            )
            return {}

    def _persist(self, durable: dict[str, dict[str, Any]]) -> None:
        """Write the durable namespaces to the snapshot file: a temporary file beside it, fsynced, then renamed."""
        if self._path is None:
            return
        text = json.dumps({"format": SNAPSHOT_FORMAT, "namespaces": durable}, indent=1, sort_keys=True)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


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
            _check_number("timeout_s", timeout_s, positive=True)
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
    """A registration in a few words: its own ``description`` when it has one, else its JSON."""
    if isinstance(value, Mapping) and isinstance(value.get("description"), str):
        return value["description"]
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
